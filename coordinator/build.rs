// refinery's embed_migrations! reads coordinator/migrations at compile time but does not
// tell cargo; without this a new migration file would not rebuild the coordinator.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
