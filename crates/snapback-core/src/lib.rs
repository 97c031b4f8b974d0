//! snapback-core: the repository format and the operations on it.
