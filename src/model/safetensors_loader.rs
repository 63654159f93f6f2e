//! A Hugging Face model folder: `config.json` plus `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; tensors are handed out as borrowed bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::model::config::Config;
use crate::model::host::{HostTensor, TensorFormat, WeightSource};
use crate::{Error, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where one tensor lives: which mapped file, and its byte range in that file.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

pub struct SafetensorsModel {
    dir: PathBuf,
    config: Config,
    files: Vec<(PathBuf, Mmap)>,
    tensors: HashMap<String, TensorEntry>,
}

impl SafetensorsModel {
    /// Open a model folder. Reads and validates `config.json` and every safetensors header; tensor
    /// data is only touched when a tensor is read.
    pub fn open(dir: &Path) -> Result<SafetensorsModel> {
        if !dir.is_dir() {
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found")));
        }
        let config = Config::from_hf_json(&dir.join("config.json"))?;
        let mut model = SafetensorsModel { dir: dir.to_path_buf(), config, files: vec![], tensors: HashMap::new() };
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        if single.is_file() {
            model.add_file(&single)?;
        } else if index.is_file() {
            for shard in shard_names(&index)? {
                let path = dir.join(&shard);
                if !path.is_file() {
                    return Err(Error::format(
                        &index,
                        format!("lists shard `{shard}`, but {} does not exist", path.display()),
                    ));
                }
                model.add_file(&path)?;
            }
        } else {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no weights: neither {SINGLE_FILE} nor {INDEX_FILE} in the folder"),
                ),
            ));
        }
        Ok(model)
    }

    /// Map one safetensors file and index its tensors. Header problems become `Error::Format`.
    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // Safety: the file is opened read-only; like every mmap-based loader we assume nobody
        // truncates it underneath us while the model is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        let file_index = self.files.len();
        for (name, info) in metadata.tensors() {
            let (s, e) = info.data_offsets;
            let entry = TensorEntry {
                file: file_index,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + s,
                end: data_start + e,
            };
            if entry.end > mmap.len() {
                return Err(Error::format(path, format!("tensor `{name}` lies beyond the end of the file")));
            }
            if let Some(prev) = self.tensors.insert(name.clone(), entry) {
                return Err(Error::format(
                    path,
                    format!("tensor `{name}` is also in {}", self.files[prev.file].0.display()),
                ));
            }
        }
        self.files.push((path.to_path_buf(), mmap));
        Ok(())
    }

    /// Names of all tensors in the folder, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The distinct shard file names of an index, in first-mention order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "missing the `weight_map` object"))?;
    let mut names: Vec<String> = vec![];
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| Error::format(index, format!("weight_map entry for `{tensor}` is not a file name")))?;
        // Shards must sit inside the model folder.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(Error::format(index, format!("shard name `{file}` is not a plain file name")));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    if names.is_empty() {
        return Err(Error::format(index, "`weight_map` is empty"));
    }
    Ok(names)
}

fn tensor_format(dtype: Dtype) -> Option<TensorFormat> {
    match dtype {
        Dtype::F32 => Some(TensorFormat::F32),
        Dtype::F16 => Some(TensorFormat::F16),
        Dtype::BF16 => Some(TensorFormat::BF16),
        _ => None,
    }
}

impl WeightSource for SafetensorsModel {
    fn config(&self) -> &Config {
        &self.config
    }
    fn origin(&self) -> &Path {
        &self.dir
    }
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::tensor(name, format!("not found in {}", self.dir.display())))?;
        let (path, mmap) = &self.files[entry.file];
        let format = tensor_format(entry.dtype).ok_or_else(|| {
            Error::tensor(
                name,
                format!("dtype {:?} in {} is not supported (F32, F16, BF16 are)", entry.dtype, path.display()),
            )
        })?;
        Ok(HostTensor {
            name: name.to_string(),
            shape: entry.shape.clone(),
            format,
            data: Cow::Borrowed(&mmap[entry.start..entry.end]),
        })
    }
    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Fetch a tensor and check its shape; the error names the tensor, the expected and the found shape.
pub fn expect_tensor<'a>(src: &'a dyn WeightSource, name: &str, shape: &[usize]) -> Result<HostTensor<'a>> {
    let t = src.tensor(name)?;
    if t.shape != shape {
        return Err(Error::tensor(
            name,
            format!("expected shape {shape:?}, found {:?} (in {})", t.shape, src.origin().display()),
        ));
    }
    Ok(t)
}
