//! The SQLite side: the `snapback` VFS, its file methods, and the entry
//! point of the loadable extension. All of the workspace's unsafe code is
//! here.
//!
//! # Why each unsafe block is sound
//!
//! SQLite calls the functions below through the `sqlite3_vfs` and
//! `sqlite3_io_methods` structs we give it, with the arguments its VFS
//! interface documents (<https://sqlite.org/c3ref/vfs.html>,
//! <https://sqlite.org/c3ref/io_methods.html>). Every unsafe block relies on
//! these promises only:
//!
//! 1. **The VFS struct lives forever.** It is leaked (`Box::leak`) when it is
//!    registered, once per process (or per loaded library), and never
//!    freed, so the pointers SQLite keeps to it and to its name stay valid.
//! 2. **`pFile` has `szOsFile` bytes, aligned for a pointer.** SQLite
//!    allocates every file object with at least the `szOsFile` we declare,
//!    which is the larger of `size_of::<PointFileC>()` and the default
//!    VFS's own `szOsFile`. So we can write a `PointFileC` there, and a
//!    temporary file we hand to the default VFS has all the room that VFS
//!    asked for.
//! 3. **Our methods see only our files.** SQLite calls a file's methods
//!    through the `pMethods` pointer stored in it; `IO_METHODS` is stored
//!    only in files that `x_open` initialised as a `PointFileC` with a live
//!    `Box<Arc<PointFile>>`. A file opened by the default VFS carries that
//!    VFS's methods, never ours. `x_close` is called once per successful
//!    open, after which SQLite never touches the file again, so the box is
//!    freed exactly once.
//! 4. **Buffers are as large as SQLite says.** `xRead` gets `iAmt` writable
//!    bytes, `xFullPathname` `nOut` bytes, out-parameters point to one
//!    valid value, and names are NUL-terminated.
//! 5. **No panic crosses into C.** Every callback that runs Rust code that
//!    could panic wraps it in `catch_unwind` and answers an error code.
//! 6. **Host functions come from the host.** In process, the three SQLite
//!    functions we call are the ones linked into this binary (rusqlite's
//!    bundled SQLite). In the loadable extension they come from the
//!    `sqlite3_api_routines` table the host hands to
//!    `sqlite3_extension_init`: a C struct of function pointers only, to
//!    which SQLite only ever appends ("add new interfaces to the end of
//!    this structure only", sqlite3ext.h), so a slot's position is fixed
//!    for every SQLite version that has it. The positions used are checked
//!    against the header in `api_slots_match_sqlite3ext_h`.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};

use libsqlite3_sys as ffi;

use crate::point::PointFile;

/// The name the VFS is registered under (`?vfs=snapback`).
pub const VFS_NAME: &str = "snapback";
const VFS_NAME_C: &CStr = c"snapback";

type VfsFindFn = unsafe extern "C" fn(*const c_char) -> *mut ffi::sqlite3_vfs;
type VfsRegisterFn = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, c_int) -> c_int;
type UriParameterFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *const c_char;

/// The SQLite functions the VFS calls, from the SQLite that loads it.
#[derive(Clone, Copy)]
struct Host {
    vfs_find: VfsFindFn,
    vfs_register: VfsRegisterFn,
    uri_parameter: UriParameterFn,
}

/// Positions in `sqlite3_api_routines` (0-based) of the slots we use.
const SLOT_VFS_FIND: usize = 141;
const SLOT_VFS_REGISTER: usize = 142;
const SLOT_URI_PARAMETER: usize = 189;

struct Registered {
    host: Host,
    /// The default VFS (unix), which serves temporary files and the
    /// clock, randomness and sleeping.
    default: *mut ffi::sqlite3_vfs,
    /// SQLite's answer when we registered.
    rc: c_int,
}

// SAFETY: `default` points to a VFS struct that SQLite keeps for the life
// of the process (a registered VFS is never freed while registered, and
// the default one never is); SQLite's VFS functions are thread-safe.
unsafe impl Send for Registered {}
// SAFETY: as for Send: nothing behind the pointer is mutated by us.
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Registered> = OnceLock::new();

/// One open database file of the VFS: SQLite's base struct first, as the
/// VFS interface requires, then ours.
#[repr(C)]
struct PointFileC {
    base: ffi::sqlite3_file,
    point: *mut Arc<PointFile>,
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Registers the VFS with the SQLite linked into this process (once).
pub(crate) fn register_in_process() -> Result<(), c_int> {
    let host = Host {
        vfs_find: ffi::sqlite3_vfs_find,
        vfs_register: ffi::sqlite3_vfs_register,
        uri_parameter: ffi::sqlite3_uri_parameter,
    };
    register(host)
}

fn register(host: Host) -> Result<(), c_int> {
    let r = REGISTERED.get_or_init(|| {
        // SAFETY: a NULL name asks for the default VFS (promise 6).
        let default = unsafe { (host.vfs_find)(std::ptr::null()) };
        if default.is_null() {
            return Registered {
                host,
                default,
                rc: ffi::SQLITE_ERROR,
            };
        }
        // SAFETY: `default` is a valid VFS struct (promise 6).
        let (default_size, default_path) = unsafe { ((*default).szOsFile, (*default).mxPathname) };
        let size = (std::mem::size_of::<PointFileC>() as c_int).max(default_size);
        let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: size,
            mxPathname: default_path.max(1024),
            pNext: std::ptr::null_mut(),
            zName: VFS_NAME_C.as_ptr(),
            pAppData: std::ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        }));
        // SAFETY: `vfs` is leaked, so it outlives SQLite's use (promise 1);
        // 0: not the default VFS.
        let rc = unsafe { (host.vfs_register)(vfs, 0) };
        Registered { host, default, rc }
    });
    if r.rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(r.rc)
    }
}

fn registered() -> Option<&'static Registered> {
    REGISTERED.get().filter(|r| r.rc == ffi::SQLITE_OK)
}

/// The loadable extension's entry point (`.load libsnapback_vfs`): registers
/// the VFS with the host SQLite and stays loaded.
///
/// # Safety
/// Called by SQLite's extension loader with a valid `sqlite3_api_routines`.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_extension_init(
    _db: *mut ffi::sqlite3,
    err: *mut *mut c_char,
    api: *const c_void,
) -> c_int {
    if api.is_null() {
        return ffi::SQLITE_ERROR;
    }
    let slots = api.cast::<Option<unsafe extern "C" fn()>>();
    // SAFETY: the table is an array of function pointers at least as long
    // as the SQLite version that built it has slots (promise 6); the slots
    // read exist since SQLite 3.7.7, older than any host that can load us.
    let (find, reg, uri) = unsafe {
        (
            *slots.add(SLOT_VFS_FIND),
            *slots.add(SLOT_VFS_REGISTER),
            *slots.add(SLOT_URI_PARAMETER),
        )
    };
    let (Some(find), Some(reg), Some(uri)) = (find, reg, uri) else {
        return ffi::SQLITE_ERROR;
    };
    // SAFETY: these slots hold exactly these signatures (sqlite3ext.h:
    // `vfs_find`, `vfs_register`, `uri_parameter`); a function pointer
    // transmuted to its real type.
    let host = unsafe {
        Host {
            vfs_find: std::mem::transmute::<unsafe extern "C" fn(), VfsFindFn>(find),
            vfs_register: std::mem::transmute::<unsafe extern "C" fn(), VfsRegisterFn>(reg),
            uri_parameter: std::mem::transmute::<unsafe extern "C" fn(), UriParameterFn>(uri),
        }
    };
    let _ = err;
    match std::panic::catch_unwind(|| register(host)) {
        // Stay loaded after the connection that loaded us closes: the VFS
        // is registered for the process.
        Ok(Ok(())) => ffi::SQLITE_OK_LOAD_PERMANENTLY,
        Ok(Err(rc)) => rc,
        Err(_) => ffi::SQLITE_ERROR,
    }
}

/// The entry point SQLite derives from the file name `libsnapback_vfs`.
///
/// # Safety
/// As `sqlite3_extension_init`.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_snapbackvfs_init(
    db: *mut ffi::sqlite3,
    err: *mut *mut c_char,
    api: *const c_void,
) -> c_int {
    // SAFETY: the same contract, passed on.
    unsafe { sqlite3_extension_init(db, err, api) }
}

/// A URI parameter of a database name SQLite passed to xOpen.
fn uri_param(host: &Host, name: *const c_char, key: &CStr) -> Option<String> {
    // SAFETY: `name` is the filename SQLite gave xOpen, which
    // sqlite3_uri_parameter accepts; `key` is NUL-terminated.
    let v = unsafe { (host.uri_parameter)(name, key.as_ptr()) };
    if v.is_null() {
        return None;
    }
    // SAFETY: SQLite returns a NUL-terminated string that lives as long as
    // the file name.
    Some(unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned())
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(reg) = registered() else {
        return ffi::SQLITE_CANTOPEN;
    };
    // SAFETY: promise 3: SQLite does not call methods of a file whose open
    // failed, and reads pMethods to know; start with none.
    unsafe { (*file).pMethods = std::ptr::null() };
    if flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
        // Temporary files (sorting, temp tables, statement journals) are
        // the default VFS's: real files of this machine, never the
        // repository. Journals or WAL files of a point are refused: a
        // point is never written.
        let temporary = ffi::SQLITE_OPEN_TEMP_DB
            | ffi::SQLITE_OPEN_TEMP_JOURNAL
            | ffi::SQLITE_OPEN_TRANSIENT_DB
            | ffi::SQLITE_OPEN_SUBJOURNAL;
        if name.is_null() || flags & temporary != 0 {
            // SAFETY: promise 2: `file` has room for the default VFS's file;
            // the default VFS initialises it with its own methods.
            return unsafe {
                match (*reg.default).xOpen {
                    Some(open) => open(reg.default, name, file, flags, out_flags),
                    None => ffi::SQLITE_CANTOPEN,
                }
            };
        }
        return ffi::SQLITE_CANTOPEN;
    }
    if name.is_null() {
        return ffi::SQLITE_CANTOPEN;
    }
    // SAFETY: promise 4: a NUL-terminated name.
    let db_name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    let host = reg.host;
    let opened = std::panic::catch_unwind(move || {
        if let Some(p) = crate::registered_point(&db_name) {
            return Ok(p);
        }
        let params = crate::point::UriParams {
            repo: uri_param(&host, name, c"repo"),
            at: uri_param(&host, name, c"at"),
            s3_endpoint: uri_param(&host, name, c"s3_endpoint"),
            s3_path_style: uri_param(&host, name, c"s3_path_style"),
        };
        crate::point::open_uri(&db_name, &params).map(Arc::new)
    });
    let point = match opened {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            crate::report_open_error(&e);
            return ffi::SQLITE_CANTOPEN;
        }
        Err(_) => return ffi::SQLITE_CANTOPEN,
    };
    let f = file.cast::<PointFileC>();
    // SAFETY: promise 2: `file` has room for a PointFileC; promise 3: the
    // box is freed by x_close.
    unsafe {
        (*f).point = Box::into_raw(Box::new(point));
        (*f).base.pMethods = &IO_METHODS;
        if !out_flags.is_null() {
            *out_flags = (flags & !(ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE))
                | ffi::SQLITE_OPEN_READONLY;
        }
    }
    ffi::SQLITE_OK
}

/// Our file's point. `file` must be a file opened by `x_open` (promise 3).
unsafe fn point_of<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a Arc<PointFile>> {
    // SAFETY: promise 3: a PointFileC whose box is live until x_close.
    unsafe { file.cast::<PointFileC>().as_ref()?.point.as_ref() }
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let f = file.cast::<PointFileC>();
    // SAFETY: promise 3: called once, on a file x_open initialised.
    unsafe {
        let p = std::mem::replace(&mut (*f).point, std::ptr::null_mut());
        if !p.is_null() {
            drop(Box::from_raw(p));
        }
        (*f).base.pMethods = std::ptr::null();
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: promise 3.
    let Some(point) = (unsafe { point_of(file) }) else {
        return ffi::SQLITE_IOERR_READ;
    };
    let (Ok(len), Ok(offset)) = (usize::try_from(amt), u64::try_from(offset)) else {
        return ffi::SQLITE_IOERR_READ;
    };
    // SAFETY: promise 4: `buf` has `amt` writable bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| point.read_at(offset, out)));
    match r {
        Ok(Ok(n)) if n == len => ffi::SQLITE_OK,
        Ok(Ok(n)) => {
            // Past the end: SQLite wants the rest zeroed and this code.
            out[n..].fill(0);
            ffi::SQLITE_IOERR_SHORT_READ
        }
        Ok(Err(e)) => {
            point.note_error(offset, len, &e);
            ffi::SQLITE_IOERR_READ
        }
        Err(_) => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn x_write(
    _file: *mut ffi::sqlite3_file,
    _buf: *const c_void,
    _amt: c_int,
    _offset: ffi::sqlite3_int64,
) -> c_int {
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_truncate(_file: *mut ffi::sqlite3_file, _size: ffi::sqlite3_int64) -> c_int {
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_sync(_file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: promise 3.
    let Some(point) = (unsafe { point_of(file) }) else {
        return ffi::SQLITE_IOERR_FSTAT;
    };
    let Ok(n) = i64::try_from(point.size()) else {
        return ffi::SQLITE_IOERR_FSTAT;
    };
    // SAFETY: promise 4: one writable value.
    unsafe { *size = n };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_lock(_file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // Reading needs a shared lock, which a point that never changes grants
    // at once; any more (to write) is refused.
    if level <= ffi::SQLITE_LOCK_SHARED {
        ffi::SQLITE_OK
    } else {
        ffi::SQLITE_READONLY
    }
}

unsafe extern "C" fn x_unlock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(
    _file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    // SAFETY: promise 4.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(
    _file: *mut ffi::sqlite3_file,
    _op: c_int,
    _arg: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    // The bytes of a point never change: no locking, no change detection,
    // no journal needed to read it.
    ffi::SQLITE_IOCAP_IMMUTABLE
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    // Nothing of a point is ever deleted, and no file of this machine
    // through this VFS either (a name may be the live database's).
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    // A point has no journal, WAL or -shm file. The names SQLite asks about
    // are its database's plus a suffix, which may be a live database's
    // real files on this machine: never look at them (a hot journal there
    // is not part of the point).
    // SAFETY: promise 4.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    // A point's name is the database's path in the snapshots (or a
    // registered point's name), already what it should be.
    // SAFETY: promise 4: `name` NUL-terminated, `out` has `n_out` bytes.
    unsafe {
        let src = CStr::from_ptr(name).to_bytes_with_nul();
        let Ok(cap) = usize::try_from(n_out) else {
            return ffi::SQLITE_CANTOPEN;
        };
        if src.len() > cap {
            return ffi::SQLITE_CANTOPEN;
        }
        std::ptr::copy_nonoverlapping(src.as_ptr().cast::<c_char>(), out, src.len());
    }
    ffi::SQLITE_OK
}

/// The default VFS, for the calls we pass on.
fn default_vfs() -> *mut ffi::sqlite3_vfs {
    registered().map_or(std::ptr::null_mut(), |r| r.default)
}

/// Defines a VFS call that SQLite makes of ours and we pass on unchanged to
/// the default VFS's call in the same slot, or answer `$none` when the
/// default VFS has none (a call without a result: does nothing).
macro_rules! pass_through {
    ($name:ident($($arg:ident: $ty:ty),*), $slot:ident) => {
        pass_through!($name($($arg: $ty),*) -> (), $slot, ());
    };
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty, $slot:ident, $none:expr) => {
        #[allow(clippy::unused_unit)]
        unsafe extern "C" fn $name(_vfs: *mut ffi::sqlite3_vfs, $($arg: $ty),*) -> $ret {
            let d = default_vfs();
            // SAFETY: `d` is null or the default VFS, which SQLite keeps for
            // the life of the process; its own call gets its own struct and
            // SQLite's arguments to ours, unchanged, under the same promises
            // (promise 6).
            unsafe {
                match d.as_ref().and_then(|v| v.$slot) {
                    Some(f) => f(d, $($arg),*),
                    None => $none,
                }
            }
        }
    };
}

type DlSym = Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)>;

pass_through!(x_dl_open(name: *const c_char) -> *mut c_void, xDlOpen, std::ptr::null_mut());
pass_through!(x_dl_error(n: c_int, msg: *mut c_char), xDlError);
pass_through!(x_dl_sym(handle: *mut c_void, sym: *const c_char) -> DlSym, xDlSym, None);
pass_through!(x_dl_close(handle: *mut c_void), xDlClose);
pass_through!(x_randomness(n: c_int, out: *mut c_char) -> c_int, xRandomness, 0);
pass_through!(x_sleep(micros: c_int) -> c_int, xSleep, 0);
pass_through!(x_current_time(out: *mut f64) -> c_int, xCurrentTime, ffi::SQLITE_ERROR);
pass_through!(x_get_last_error(n: c_int, out: *mut c_char) -> c_int, xGetLastError, 0);

unsafe extern "C" fn x_current_time_int64(
    _vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    let d = default_vfs();
    // SAFETY: passed on, as by `pass_through!`; a version-1 default VFS
    // lacks the call, and SQLite then uses xCurrentTime.
    unsafe {
        match d
            .as_ref()
            .filter(|v| v.iVersion >= 2)
            .and_then(|v| v.xCurrentTimeInt64)
        {
            Some(f) => f(d, out),
            None => ffi::SQLITE_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    /// The slot positions used in `sqlite3_extension_init` are those of
    /// the `sqlite3_api_routines` struct in the header SQLite ships.
    #[test]
    fn api_slots_match_sqlite3ext_h() {
        let header = include_str!("sqlite3ext_slots.txt");
        let slots: Vec<&str> = header.lines().map(str::trim).collect();
        assert_eq!(slots.get(super::SLOT_VFS_FIND), Some(&"vfs_find"));
        assert_eq!(slots.get(super::SLOT_VFS_REGISTER), Some(&"vfs_register"));
        assert_eq!(slots.get(super::SLOT_URI_PARAMETER), Some(&"uri_parameter"));
    }
}
