//! The compiled eBPF object, embedded at build time (see `build.rs`), or why
//! it could not be built.

use crate::error::Error;

const DATAPATH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/datapath.o"));
const DATAPATH_MISSING: &str = include_str!(concat!(env!("OUT_DIR"), "/datapath.missing"));

/// The datapath object, or an error saying why the build could not make it.
pub(crate) fn datapath() -> Result<&'static [u8], Error> {
    if DATAPATH.is_empty() {
        return Err(Error::ProgramsMissing(DATAPATH_MISSING));
    }
    Ok(DATAPATH)
}
