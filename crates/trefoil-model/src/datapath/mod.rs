//! The datapath rules' own logic, pure and shared by the control plane, the
//! CLI and the node agent: the address and port types, which rule wins
//! where rules overlap (`precedence`), the flat table the kernel side
//! programs from (`compile`), and the seed's compact one-line form
//! (`compact`), what `describe` shows (`relations`), where a rule's `to`
//! leads (`targets`), and the resolved table one node's agent programs
//! (`node_table`).

pub mod cidr;
pub mod compact;
pub mod node_table;
pub mod ports;
pub mod precedence;
pub mod relations;
pub mod targets;

pub use cidr::{Cidr, Family, ParseCidrError};
pub use ports::{ParsePortError, PortRange};
pub use precedence::{compile, explain, ordered, overlaps, Decision, Entry, Flow, Overlap, Rule, Verdict};
