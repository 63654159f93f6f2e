//! Long-context evaluation (issue 13): task generators and the scorer. The runner that drives
//! methods over them is `examples/eval.rs`; `docs/eval.md` has the results and commands.
pub mod score;
pub mod tasks;

pub use score::score;
pub use tasks::{generate, Case, TaskKind};
