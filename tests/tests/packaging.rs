//! The Debian package's metadata (`[package.metadata.deb]` in cli/Cargo.toml, for
//! `cargo deb`) names files that exist, every daemon's binary, both systemd units, the
//! example configs as conffiles, and maintainer scripts that are valid shell and create
//! the `drover` user. The compose file and Dockerfile stay in step with the config.

use figment::providers::{Format, Toml};
use figment::Figment;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn deb_metadata_names_existing_files_binaries_units_and_a_drover_user() -> anyhow::Result<()> {
    let cli = root().join("cli");
    let manifest: serde_json::Value =
        Figment::from(Toml::file(cli.join("Cargo.toml"))).extract()?;
    let deb = &manifest["package"]["metadata"]["deb"];
    assert_eq!(deb["name"], "drover");
    let assets = deb["assets"].as_array().expect("assets");
    let mut dests = Vec::new();
    for a in assets {
        let src = a[0].as_str().expect("asset source");
        let dest = a[1].as_str().expect("asset destination");
        if let Some(bin) = src.strip_prefix("target/release/") {
            // A binary some crate of the workspace builds.
            let found = ["coordinator", "worker", "cli"].iter().any(|c| {
                std::fs::read_to_string(root().join(c).join("Cargo.toml"))
                    .map(|t| t.contains(&format!("name = \"{bin}\"")))
                    .unwrap_or(false)
            });
            assert!(found, "{bin} is not a binary of the workspace");
        } else {
            assert!(cli.join(src).exists(), "asset {src} does not exist");
        }
        dests.push(format!(
            "{dest}{}",
            if dest.ends_with('/') {
                Path::new(src)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        ));
    }
    for want in [
        "usr/bin/drover-coordinator",
        "usr/bin/drover-worker",
        "usr/bin/droverctl",
        "lib/systemd/system/drover-coordinator.service",
        "lib/systemd/system/drover-worker.service",
        "etc/drover/coordinator.toml",
        "etc/drover/worker.toml",
        "usr/share/doc/drover/deploy.md",
    ] {
        assert!(
            dests.iter().any(|d| d == want),
            "{want} not packaged: {dests:?}"
        );
    }
    for conf in deb["conf-files"].as_array().expect("conf-files") {
        let conf = conf.as_str().unwrap_or_default();
        assert!(
            dests.iter().any(|d| format!("/{d}") == conf),
            "conffile {conf} is not an asset"
        );
    }
    let scripts = cli.join(
        deb["maintainer-scripts"]
            .as_str()
            .expect("maintainer-scripts"),
    );
    for s in ["postinst", "prerm", "postrm"] {
        let path = scripts.join(s);
        let out = Command::new("sh").arg("-n").arg(&path).output()?;
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        assert!(
            std::fs::metadata(&path)?.permissions().mode() & 0o111 != 0,
            "{s} is not executable"
        );
    }
    let postinst = std::fs::read_to_string(scripts.join("postinst"))?;
    assert!(postinst.contains("adduser --system"), "no drover user made");
    // The units run as that user.
    for unit in ["drover-coordinator.service", "drover-worker.service"] {
        let text = std::fs::read_to_string(root().join("deploy").join(unit))?;
        assert!(text.contains("User=drover"), "{unit}");
        assert!(
            text.contains("ExecStart=/usr/bin/"),
            "{unit}: not the packaged path"
        );
    }
    Ok(())
}

#[test]
fn compose_workers_list_both_coordinators_and_dockerfile_builds_every_binary() -> anyhow::Result<()>
{
    let compose = std::fs::read_to_string(root().join("deploy/compose.yaml"))?;
    let workers: Vec<&str> = compose
        .lines()
        .filter(|l| l.contains("\"drover-worker\""))
        .collect();
    assert_eq!(workers.len(), 3);
    for w in workers {
        assert!(
            w.contains("coordinator-a:50051") && w.contains("coordinator-b:50051"),
            "a worker without failover: {w}"
        );
    }
    let docker = std::fs::read_to_string(root().join("deploy/Dockerfile"))?;
    for b in ["drover-coordinator", "drover-worker", "droverctl"] {
        assert!(
            docker.contains(&format!("release/{b}")),
            "{b} not in the image"
        );
    }
    // The packaged droverctl is the client alone: built without the `dev` feature, which
    // would carry the coordinator and the worker inside it.
    let deploy = std::fs::read_to_string(root().join("docs/deploy.md"))?;
    for (what, text) in [("Dockerfile", &docker), ("docs/deploy.md", &deploy)] {
        assert!(
            text.contains("cargo build --release -p droverctl --no-default-features"),
            "{what} packages a droverctl with `dev`"
        );
    }
    let cli = std::fs::read_to_string(root().join("cli/Cargo.toml"))?;
    assert!(
        cli.contains("default = [\"dev\"]"),
        "dev is not on by default"
    );
    Ok(())
}
