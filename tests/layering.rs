//! The crate's layers (docs/ARCHITECTURE.md): every `crate::<module>` a file under `src/<module>`
//! names must belong to a lower layer, so there is no import cycle; `backend/` imports nothing
//! above it; the model, generation and distillation reach the CPU backend only through the
//! contract (never `backend::cpu`).

use std::collections::BTreeSet;
use std::path::Path;

/// Each top-level module and its layer; a module may import only modules of a lower layer.
const LAYERS: [(&str, usize); 12] = [
    ("error", 0),
    ("backend", 1),
    ("eval", 1),
    ("metrics", 1),
    ("tensor", 2),
    ("autograd", 3),
    ("optim", 3),
    ("model", 4),
    ("data", 5),
    ("generate", 5),
    ("distill", 6),
    ("bench", 7),
];

fn layer(m: &str) -> Option<usize> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l)
}

/// The code of every .rs file under `dir` (or the file `dir`.rs), comments dropped.
fn sources(root: &Path, module: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let file = root.join(format!("{module}.rs"));
    let mut stack = vec![root.join(module)];
    if file.is_file() {
        stack.push(file);
    }
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            let code: String =
                text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            out.push((p.display().to_string(), code));
        }
    }
    out
}

/// The modules a text names as `crate::<module>`.
fn imports(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, _)| code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect()
}

/// Whether a text names the CPU backend: `backend::cpu`, or `cpu` inside a `backend::{…}` group.
fn names_cpu_backend(code: &str) -> bool {
    code.match_indices("backend::").any(|(i, m)| {
        let rest = code[i + m.len()..].trim_start();
        let ident: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if ident == "cpu" {
            return true;
        }
        let Some(group) = rest.strip_prefix('{') else { return false };
        let mut depth = 1;
        let end = group
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(group.len(), |(j, _)| j);
        group[..end].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|word| word == "cpu")
    })
}

#[test]
fn layers_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for (module, l) in LAYERS {
        let files = sources(&src, module);
        assert!(!files.is_empty(), "src/{module} has no sources");
        for (path, code) in files {
            for dep in imports(&code) {
                if dep == module {
                    continue;
                }
                match layer(&dep) {
                    Some(d) if d < l => {}
                    Some(d) => {
                        problems.push(format!("{path}: {module} (layer {l}) imports {dep} (layer {d})"))
                    }
                    None => problems.push(format!("{path}: imports crate::{dep}, which has no layer here")),
                }
            }
            let through_cpu = names_cpu_backend(&code);
            if ["model", "generate", "distill"].contains(&module) && through_cpu {
                problems.push(format!("{path}: names backend::cpu past the backend contract"));
            }
        }
    }
    assert!(problems.is_empty(), "layering violations:\n{}", problems.join("\n"));
}

/// The check itself fails on an upward import.
#[test]
fn an_upward_import_is_caught() {
    assert!(imports("use crate::model::Model;\nlet x = crate::tensor::Tensor::zeros;").contains("model"));
    assert!(layer("model").unwrap() > layer("backend").unwrap());
}

/// The contract check catches the CPU backend however it is named, and only it.
#[test]
fn naming_the_cpu_backend_is_caught() {
    assert!(names_cpu_backend("use crate::backend::cpu::matmul;"));
    assert!(names_cpu_backend("use crate::backend::{cpu, Divergence};"));
    assert!(names_cpu_backend("use crate::backend::{ops::{AttnDims}, cpu::CpuStorage};"));
    assert!(!names_cpu_backend("use crate::backend::{ops::AttnDims, Divergence};"));
    assert!(!names_cpu_backend("use crate::backend::cpus_free::X;\nlet cpu = 1;"));
}
