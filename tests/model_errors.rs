//! Bad checkpoints and configurations are errors a user can act on: each names what is wrong.

mod model_common;

use gkd::data::Tokenizer;
use gkd::model::{checkpoint, Model};
use gkd::Tensor;
use model_common::{copy_fixture, fixture};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

fn load_err(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the single-file checkpoint of `dir` through `edit` of its (name, tensor) list.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let model = Model::load(dir).unwrap();
    let mut named: Vec<(String, Tensor)> =
        model.names().iter().cloned().zip(model.tensors().unwrap().iter().cloned()).collect();
    edit(&mut named);
    checkpoint::save(dir, &named, gkd::DType::F32, None).unwrap();
}

#[test]
fn truncated_file() {
    let dir = copy_fixture("gpt2", "truncated");
    let path = dir.join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 100).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
}

#[test]
fn wrong_dtype() {
    let dir = copy_fixture("gpt2", "wrong-dtype");
    let model = Model::load(&dir).unwrap();
    // Every tensor as stored, except ln_f.weight as I32.
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .names()
        .iter()
        .zip(model.tensors().unwrap())
        .map(|(n, t)| {
            (
                n.clone(),
                t.dims().to_vec(),
                t.to_vec_f32().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            let dtype = if n == "transformer.ln_f.weight" { Dtype::I32 } else { Dtype::F32 };
            (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("transformer.ln_f.weight") && e.contains("I32") && e.contains("BF16"), "{e}");
}

#[test]
fn missing_tensor() {
    let dir = copy_fixture("llama", "missing");
    rewrite(&dir, |t| t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight"));
    let e = load_err(&dir);
    assert!(e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("[64, 48]"), "{e}");
}

#[test]
fn missing_untied_head() {
    let dir = copy_fixture("llama", "missing-head");
    rewrite(&dir, |t| t.retain(|(n, _)| n != "lm_head.weight"));
    let e = load_err(&dir);
    assert!(e.contains("lm_head.weight") && e.contains("tie_word_embeddings"), "{e}");
}

#[test]
fn mis_shaped_tensor() {
    let dir = copy_fixture("qwen2", "mis-shaped");
    rewrite(&dir, |t| {
        let i = t.iter().position(|(n, _)| n == "model.layers.0.self_attn.k_proj.bias").unwrap();
        t[i].1 = Tensor::from_vec(vec![0.0f32; 24], [24]).unwrap();
    });
    let e = load_err(&dir);
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.bias") && e.contains("[24]") && e.contains("[16]"),
        "{e}"
    );
}

#[test]
fn unknown_architecture() {
    let dir = copy_fixture("gpt2", "unknown-arch");
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"gpt2\"", "\"bert\"");
    std::fs::write(&path, text).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("bert") && e.contains("gpt2, llama, qwen2, mistral"), "{e}");
}

#[test]
fn no_weights() {
    let dir = copy_fixture("gpt2", "no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors.index.json"), "{e}");
}

#[test]
fn tokenizer_larger_than_the_embedding() {
    let tok = Tokenizer::load(&fixture("gpt2")).unwrap();
    assert_eq!(tok.vocab_size(), 300);
    tok.check_fits(300).unwrap();
    let e = tok.check_fits(256).unwrap_err().to_string();
    assert!(e.contains("300 tokens") && e.contains("256 rows"), "{e}");
}

#[test]
fn too_long_for_gpt2_positions() {
    let model = Model::load(&fixture("gpt2")).unwrap();
    let e = model.logprobs(&[vec![3; 65]]).unwrap_err().to_string();
    assert!(e.contains("65 tokens") && e.contains("64 positions"), "{e}");
}
