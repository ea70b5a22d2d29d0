//! deregd's integration tests, one binary: end to end through the real dispatch loop against
//! the in-process emulator, and process-level through the real `deregd` binary.

mod adversity;
mod cli;
mod clock_step;
mod common;
mod credentials;
mod groups;
mod hostile;
mod proxy;
mod renewal;
mod runs;
mod service;
mod store_faults;
mod typed_rows;
mod windows;
mod worker;
