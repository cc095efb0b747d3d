//! wxmp: a small, fast, trustworthy server for a WeChat Official Account.
//!
//! One module a concern: [`signature`] checks WeChat's request signatures, [`message`] parses
//! inbound XML, [`reply`] writes passive-reply XML, [`crypto`] handles safe mode (AES),
//! [`config`] loads `wxmp.toml`, [`dedup`] makes retries idempotent, [`logging`] writes
//! rotated logs and [`server`] ties them to a tiny_http recv loop.

pub mod config;
pub mod crypto;
pub mod dedup;
pub mod logging;
pub mod message;
pub mod reply;
pub mod router;
pub mod send;
pub mod server;
pub mod signature;
pub mod watchdog;
