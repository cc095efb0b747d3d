//! wxmp: a small, fast, trustworthy server for a WeChat Official Account.
//!
//! One module a concern: [`signature`] checks WeChat's request signatures, [`message`] parses
//! inbound XML, [`reply`] writes passive-reply XML, [`crypto`] handles safe mode (AES) with
//! [`random`] bytes, [`config`] loads `wxmp.toml`, [`dedup`] makes retries idempotent,
//! [`replay`] lets a signed URL carry one message, [`logging`] writes rotated logs and
//! [`server`] ties them to a tiny_http recv loop. [`command`] checks the `[[command]]` tables,
//! [`router`] answers with them, [`exec`] runs their programs and [`pending`] keeps results
//! that missed WeChat's last try for the user's next message; [`state`] hands all of it from a
//! stopping process to the next; [`watchdog`] and [`strands`] keep tiny_http answering;
//! [`activation`] takes the listening socket systemd keeps open across restarts.

pub mod activation;
pub mod command;
pub mod config;
pub mod crypto;
pub mod dedup;
pub mod exec;
pub mod logging;
pub mod message;
pub mod pending;
pub mod random;
pub mod replay;
pub mod reply;
pub mod router;
pub mod send;
pub mod server;
pub mod signature;
pub mod state;
pub mod strands;
pub mod watchdog;
