//! `droverctl dev` in a droverctl built without the `dev` feature (as packaged): the
//! subcommand stays so that it can say how to get the local stack.

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct DevArgs {
    /// (Ignored: this droverctl has no local stack.)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<String>,
}

pub async fn run(_args: DevArgs) -> Result<()> {
    bail!(
        "this droverctl was built without the local stack (cargo feature \"dev\"); \
         from a checkout run `cargo run -p droverctl -- dev`, or install one with it: \
         `cargo install --path cli` (the feature is on by default)"
    )
}
