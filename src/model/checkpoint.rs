//! Safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`; f32, bf16 and f16 on disk, converted to f32 on load.
//!
//! Files are memory-mapped; each file's header is checked when it is opened (a truncated file, or
//! one whose offsets do not cover it, is refused there), and each tensor is converted only when
//! asked for.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the file.
    start: usize,
    end: usize,
}

pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

fn msg(s: String) -> Error {
    Error::Msg(s)
}

impl Checkpoint {
    /// Opens the checkpoint in a model directory: the index of shards when there is one, else the
    /// single file.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        if index.exists() {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| msg(format!("cannot read {}: {e}", index.display())))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| msg(format!("{} is not valid JSON: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| msg(format!("{} has no `weight_map` object", index.display())))?;
            // Shard file names in a stable order; each tensor must be found in the shard named.
            let mut shards: Vec<String> =
                map.values().filter_map(Value::as_str).map(str::to_string).collect();
            shards.sort();
            shards.dedup();
            let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            let ck = Checkpoint::open_files(&paths)?;
            for (name, shard) in map {
                let shard = shard.as_str().unwrap_or_default();
                match ck.entries.get(name) {
                    Some(e) if ck.files[e.file].0 == dir.join(shard) => {}
                    _ => {
                        return Err(msg(format!(
                            "{} lists tensor `{name}` in {shard}, but that shard does not hold it",
                            index.display()
                        )))
                    }
                }
            }
            Ok(ck)
        } else if single.exists() {
            Checkpoint::open_files(&[single])
        } else {
            Err(msg(format!("no weights in {}: expected {SINGLE_FILE} or {INDEX_FILE}", dir.display())))
        }
    }

    /// Opens a set of safetensors files as one checkpoint (a tensor name may appear only once).
    pub fn open_files(paths: &[PathBuf]) -> Result<Checkpoint> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| msg(format!("cannot open {}: {e}", path.display())))?;
            // SAFETY: the map is read-only; a checkpoint changed on disk while gkd reads it is
            // outside what gkd supports (as for every memory-mapping loader).
            let mmap = unsafe { Mmap::map(&file) }
                .map_err(|e| msg(format!("cannot memory-map {}: {e}", path.display())))?;
            let (header, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                msg(format!(
                    "{} is not a valid safetensors file ({e}); it may be truncated or corrupt: download or save it again",
                    path.display()
                ))
            })?;
            let base = 8 + header;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let entry = Entry {
                    file: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + s,
                    end: base + e,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(msg(format!(
                        "tensor `{name}` appears in more than one file of the checkpoint"
                    )));
                }
            }
            files.push((path.clone(), mmap));
        }
        Ok(Checkpoint { files, entries })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The tensor `name`, converted to f32, into `dst`; its shape must be `expected`.
    pub fn read_f32_into(&self, name: &str, expected: &[usize], dst: &mut [f32]) -> Result<()> {
        let e = self.entries.get(name).ok_or_else(|| {
            msg(format!("the checkpoint has no tensor `{name}` (expected shape {expected:?})"))
        })?;
        if e.shape != expected {
            return Err(msg(format!(
                "tensor `{name}` has shape {:?} in the checkpoint, but the config needs {expected:?}",
                e.shape
            )));
        }
        let (path, mmap) = &self.files[e.file];
        // Byte-wise decoding: the mapped data need not be aligned for its type.
        let bytes = &mmap[e.start..e.end];
        let width = match e.dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F64 => 8,
            other => {
                return Err(msg(format!(
                "tensor `{name}` in {} is stored as {other:?}; gkd loads F32, BF16, F16 (and F64) weights",
                path.display()
            )))
            }
        };
        if bytes.len() != dst.len() * width {
            return Err(msg(format!(
                "tensor `{name}` in {} has {} bytes for {} elements: the file is corrupt",
                path.display(),
                bytes.len(),
                dst.len()
            )));
        }
        let chunks = bytes.par_chunks_exact(width);
        match e.dtype {
            Dtype::F32 => dst
                .par_iter_mut()
                .zip(chunks)
                .for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::BF16 => dst
                .par_iter_mut()
                .zip(chunks)
                .for_each(|(d, b)| *d = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            Dtype::F16 => dst
                .par_iter_mut()
                .zip(chunks)
                .for_each(|(d, b)| *d = f16::from_le_bytes([b[0], b[1]]).to_f32()),
            _ => dst
                .par_iter_mut()
                .zip(chunks)
                .for_each(|(d, b)| *d = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32),
        }
        Ok(())
    }
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::U32 => Dtype::U32,
        DType::U8 => Dtype::U8,
    }
}

/// The little-endian bytes of `t` converted to `dtype`.
fn to_bytes(t: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    let host = t.to_cpu_storage()?.convert(dtype);
    use crate::tensor::CpuStorage as S;
    Ok(match host {
        S::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        S::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        S::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        S::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        S::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        S::U8(v) => v,
    })
}

/// Writes `tensors` (Hugging Face names) to `dir` in `dtype`: one `model.safetensors`, or, when
/// the total exceeds `max_shard_bytes`, shards `model-0000i-of-0000n.safetensors` plus
/// `model.safetensors.index.json`, as `save_pretrained` does.
pub fn save(
    dir: &Path,
    tensors: &[(String, Tensor)],
    dtype: DType,
    max_shard_bytes: Option<usize>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| msg(format!("cannot create {}: {e}", dir.display())))?;
    let blobs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.dims().to_vec(), to_bytes(t, dtype)?)))
        .collect::<Result<_>>()?;
    let total: usize = blobs.iter().map(|b| b.2.len()).sum();
    let limit = max_shard_bytes.unwrap_or(usize::MAX).max(1);
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0;
    for (i, b) in blobs.iter().enumerate() {
        if size > 0 && size + b.2.len() > limit {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        size += b.2.len();
    }
    // transformers refuses safetensors files without format metadata.
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let write = |path: &Path, members: &[usize]| -> Result<()> {
        let views: Vec<(String, TensorView<'_>)> = members
            .iter()
            .map(|&i| {
                let (n, shape, bytes) = &blobs[i];
                TensorView::new(st_dtype(dtype), shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| msg(format!("tensor `{n}`: {e}")))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(views, Some(metadata.clone()), path)
            .map_err(|e| msg(format!("cannot write {}: {e}", path.display())))
    };
    // Stale files of the other layout would confuse a loader.
    let _ = std::fs::remove_file(dir.join(INDEX_FILE));
    let _ = std::fs::remove_file(dir.join(SINGLE_FILE));
    if shards.len() == 1 {
        return write(&dir.join(SINGLE_FILE), &shards[0]);
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (s, members) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, n);
        write(&dir.join(&file), members)?;
        for &i in members {
            weight_map.insert(blobs[i].0.clone(), file.clone());
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let path = dir.join(INDEX_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&index).expect("JSON"))
        .map_err(|e| msg(format!("cannot write {}: {e}", path.display())))
}
