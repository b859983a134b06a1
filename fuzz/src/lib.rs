//! Shared code of keel's fuzz targets: the structure-aware config grammar, the request-head
//! builder and the invariants each target asserts. See `fuzz/README.md` for how to run them.

pub mod doc;
pub mod grammar;
pub mod head;
pub mod invariants;
