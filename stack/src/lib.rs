//! The local Drover stack, shared by `droverctl dev`, the end-to-end tests, the benchmark
//! and the chaos runner: a PostgreSQL server (private, or the one `DATABASE_URL` names),
//! tokens, `drover-coordinator` and `drover-worker` processes started with options,
//! waiting until they are ready, and teardown.

pub mod bins;
pub mod coordinator;
pub mod database;
mod error;
pub mod process;
pub mod ready;
pub mod tokens;
pub mod worker;

pub use bins::Bins;
pub use coordinator::{CoordinatorLaunch, Listening};
pub use database::{connect, private_server, Db, Server};
pub use error::{Error, Result};
pub use process::{free_port, Proc};
pub use worker::WorkerLaunch;
