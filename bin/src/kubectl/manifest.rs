//! Objects from `-f` sources: files, directories (their .yaml/.yml/.json files), stdin;
//! multi-document YAML, concatenated JSON, and `kind: List` items.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// One object and where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub source: String,
    pub object: Value,
}

impl Manifest {
    pub fn api_version(&self) -> &str {
        self.object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn kind(&self) -> &str {
        self.object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// Reads every object of the given `-f` arguments, in order. Nothing is sent before all of
/// them parsed, so a typo in the last file does not leave the first half applied.
pub fn read_all(paths: &[String], recursive: bool) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for p in paths {
        if p == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            parse_into(&text, "STDIN", false, &mut out)?;
        } else if p.starts_with("http://") || p.starts_with("https://") {
            bail!("reading manifests from URLs is not supported: {p}");
        } else {
            let path = Path::new(p);
            if !path.exists() {
                bail!("the path \"{p}\" does not exist");
            }
            read_path(path, recursive, true, &mut out)?;
        }
    }
    if out.is_empty() {
        bail!("no objects passed to apply");
    }
    Ok(out)
}

fn read_path(
    path: &Path,
    recursive: bool,
    top: bool,
    out: &mut Vec<Manifest>,
) -> anyhow::Result<()> {
    if path.is_dir() {
        if !top && !recursive {
            return Ok(());
        }
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            let manifest_file = e
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"));
            if e.is_dir() || manifest_file {
                read_path(&e, recursive, false, out)?;
            }
        }
        return Ok(());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    let json = path.extension().and_then(|x| x.to_str()) == Some("json");
    parse_into(&text, &path.display().to_string(), json, out)
}

/// Parses one source's documents into objects, expanding lists.
pub fn parse_into(
    text: &str,
    source: &str,
    json: bool,
    out: &mut Vec<Manifest>,
) -> anyhow::Result<()> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if json || trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("error parsing {source}: {e}"))?
    } else {
        serde_saphyr::from_multiple::<Value>(text)
            .map_err(|e| anyhow::anyhow!("error parsing {source}: {e}"))?
    };
    for doc in docs {
        push_object(doc, source, out)?;
    }
    Ok(())
}

fn push_object(doc: Value, source: &str, out: &mut Vec<Manifest>) -> anyhow::Result<()> {
    match doc {
        Value::Null => Ok(()),
        Value::Object(ref map) if map.is_empty() => Ok(()),
        Value::Array(items) => {
            for item in items {
                push_object(item, source, out)?;
            }
            Ok(())
        }
        Value::Object(_) => {
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
            if kind.is_empty() {
                bail!("unable to decode \"{source}\": Object 'Kind' is missing");
            }
            if kind.ends_with("List")
                && let Some(Value::Array(items)) = doc.get("items")
            {
                for item in items.clone() {
                    push_object(item, source, out)?;
                }
                return Ok(());
            }
            if doc
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                bail!("unable to decode \"{source}\": Object 'apiVersion' is missing");
            }
            out.push(Manifest {
                source: source.to_owned(),
                object: doc,
            });
            Ok(())
        }
        other => bail!("error parsing {source}: expected an object, got {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<Manifest>> {
        let mut out = Vec::new();
        parse_into(text, "test", false, &mut out)?;
        Ok(out)
    }

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = "---\n# a comment\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: c\n  data:\n    port: \"80\"\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: d\n";
        let m = parse(text).unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["a", "c", "d"]);
        assert_eq!(m[1].object["data"]["port"], "80");
        assert_eq!(m[2].api_version(), "apps/v1");
    }

    #[test]
    fn json_documents() {
        let m = parse("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\"}}\n{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"y\"}}").unwrap();
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(parse("kind: [unclosed").is_err());
        assert!(parse("apiVersion: v1\nmetadata:\n  name: x\n").is_err());
        assert!(parse("kind: ConfigMap\n").is_err());
        assert!(parse("- 1\n- 2\n").is_err());
        assert!(parse("{\"kind\": ").is_err());
        assert!(parse("").unwrap().is_empty());
    }
}
