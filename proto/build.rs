//! Compiles the protobuf API with protox (pure Rust), so no system `protoc` is needed.
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::DescriptorProto;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "drover/v1/drover.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    // Kept for gRPC server reflection.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("drover_descriptor.bin"), fds.encode_to_vec())?;
    // Undecodable requests are INVALID_ARGUMENT (see src/codec.rs). Every message also
    // gets serde derives for the JSON API (/api/v1): field names as in the .proto, enums
    // by their names, timestamps as RFC 3339, durations as "1.5s" (see src/jsonfmt.rs).
    let mut cfg = tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default, deny_unknown_fields)]");
    let mut fields = Vec::new();
    for f in &fds.file {
        let pkg = format!(".{}", f.package());
        for m in &f.message_type {
            special_fields(&pkg, m, &mut fields);
        }
    }
    for (path, with) in fields {
        cfg = cfg.field_attribute(path, format!("#[serde(with = \"{with}\")]"));
    }
    cfg.compile_fds(fds)?;
    Ok(())
}

/// Fields whose JSON form is not serde's default: enums (i32 in Rust, names in JSON),
/// timestamps and durations.
fn special_fields(prefix: &str, m: &DescriptorProto, out: &mut Vec<(String, String)>) {
    let path = format!("{prefix}.{}", m.name());
    let maps: Vec<String> = m
        .nested_type
        .iter()
        .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()))
        .map(|n| n.name().to_string())
        .collect();
    for f in &m.field {
        let repeated = f.label() == Label::Repeated;
        let module = match (f.r#type(), f.type_name()) {
            (Type::Enum, t) => {
                let name = t.rsplit('.').next().unwrap_or(t);
                let mut snake = String::new();
                for (i, c) in name.chars().enumerate() {
                    if c.is_ascii_uppercase() && i > 0 {
                        snake.push('_');
                    }
                    snake.push(c.to_ascii_lowercase());
                }
                if repeated {
                    format!("crate::jsonfmt::{snake}::repeated")
                } else {
                    format!("crate::jsonfmt::{snake}")
                }
            }
            (Type::Message, ".google.protobuf.Timestamp") if repeated => {
                "crate::jsonfmt::timestamps".to_string()
            }
            (Type::Message, ".google.protobuf.Timestamp") => "crate::jsonfmt::timestamp".into(),
            (Type::Message, ".google.protobuf.Duration") => "crate::jsonfmt::duration".into(),
            (Type::Bytes, _) if !repeated => "crate::jsonfmt::bytes".into(),
            (Type::Message, t) if maps.iter().any(|n| t.ends_with(&format!(".{n}"))) => continue,
            _ => continue,
        };
        out.push((format!("{path}.{}", f.name()), module));
    }
    for n in &m.nested_type {
        special_fields(&path, n, out);
    }
}
