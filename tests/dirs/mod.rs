//! Directory helpers shared by test crates (kept apart from tests/common,
//! which needs the `redis` feature).

use std::path::Path;

/// Copies every file of `from` into `to` (created). Taken while a cache
/// has `from` open, the copy is what a kill leaves: redb keeps its commits
/// made without fsync in memory, so writes since the last durable commit
/// are in the write-ahead log alone.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
