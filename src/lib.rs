//! deregd: deregisters ApsaraMQ for MQTT device credentials in bulk.
pub mod emulator;
