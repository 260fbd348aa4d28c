//! The docs name what the code has: every module of the binaries appears in
//! docs/architecture.md's module map.

use std::path::Path;

#[test]
fn every_module_is_in_the_module_map() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/architecture.md"))?;
    let map = doc
        .split("## Module map")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .ok_or_else(|| anyhow::anyhow!("docs/architecture.md has no Module map section"))?;
    let mut missing = Vec::new();
    for dir in [
        "coordinator/src",
        "coordinator/src/store",
        "worker/src",
        "cli/src",
        "stack/src",
    ] {
        for e in std::fs::read_dir(root.join(dir))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".rs") && !map.contains(&format!("| `{name}` |")) {
                missing.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules missing from docs/architecture.md's module map: {missing:?}"
    );
    Ok(())
}
