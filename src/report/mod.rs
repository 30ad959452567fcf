//! What microdib tells its user: virt-dib's messages (`messages`), the writers' progress
//! (`progress`), the time summary at the end (`summary`) and the `--machine-readable` channel
//! (`machine`). It imports nothing of the
//! command line, the engine or the formats, so every layer can report through it.

pub mod machine;
pub mod messages;
pub mod progress;
pub mod summary;

pub use machine::MachineReadable;
pub use messages::{Json, Reporter, ReporterOptions, Stream, Transcript};
pub use summary::TimeSummary;
