//! End-to-end tests: the real `snapback` binary on real files, real SQLite
//! databases written concurrently, and a real repository on disk.

mod rel_util;
mod util;

mod bad_files;
mod bad_input;
mod consistency;
mod conventions;
mod corruption;
mod crash;
mod delta_restore;
mod dictionaries;
mod encryption;
mod exit_codes;
mod files;
mod format_fixtures;
mod fuzz_regressions;
mod heartbeat;
mod hostile;
mod inplace;
mod integrity;
mod messages;
mod monitoring;
mod ops;
mod points_retention;
mod prune_race;
mod quiet;
mod read_only;
mod retention;
mod s3;
mod secrets;
mod selectors;
mod timeline;
mod timeline_kit;
mod units;
mod verify_live;
mod watch;
mod watch_batch;
mod watch_forget;
mod watch_spool;
