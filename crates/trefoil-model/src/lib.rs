//! Trefoil's declarative resources: their types, defaults, and validation
//! that points at the file, line, column and field of every mistake.

pub mod authz;
pub mod check;
pub mod datapath;
pub mod diagnostic;
pub mod duration;
pub mod load;
pub mod located_yaml;
pub mod parsed;
pub mod relations;
pub mod resource;
pub mod spec;
pub mod validate;
pub mod version;

pub use check::check_all;
pub use diagnostic::{Diagnostic, Diagnostics};
pub use duration::Duration;
pub use load::{from_yaml, load_all_path, load_all_str, load_path, load_str, Loaded, SourcedResource};
pub use resource::{Metadata, Resource, Spec, API_VERSION};
pub use validate::{valid_name, validate, validate_against, validate_each};
pub use version::ResourceVersion;
