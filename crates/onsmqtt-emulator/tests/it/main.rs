//! End-to-end tests of the in-process emulator, driven over real HTTP with reqwest.

mod accounting;
mod common;
mod credential;
mod list;
mod metadata;
mod proxy;
mod signing;
mod sts;
mod unregister;
