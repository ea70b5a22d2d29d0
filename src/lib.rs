//! deregd: deregisters ApsaraMQ for MQTT device credentials in bulk.
pub mod cli_emulator;
pub mod emulator;
