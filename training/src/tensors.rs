//! Models and updates as `safetensors` files, the format PyTorch and the rest of the ML world
//! load without custom code. A flat parameter vector maps to named tensors through a
//! [`Layout`]; reading checks every name, shape and value against the layout, since the
//! bytes come from outside the node (an external trainer's output).

use std::collections::HashMap;

pub use safetensors::Dtype;
use safetensors::{SafeTensors, tensor::TensorView};

use crate::trainer::Layout;

/// Room for the JSON header on top of the tensors' data when bounding a file before reading.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("reading {file}: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: not a safetensors file: {reason}")]
    Malformed { file: String, reason: String },
    #[error("{file}: {size} bytes, more than the {limit} this model's tensors can take")]
    TooLarge { file: String, size: u64, limit: u64 },
    #[error("{file}: no tensor named {name:?} (expected {expected})")]
    Missing {
        file: String,
        name: String,
        expected: String,
    },
    #[error("{file}: unexpected tensor {name:?} (expected {expected})")]
    Unexpected {
        file: String,
        name: String,
        expected: String,
    },
    #[error("{file}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        file: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{file}: tensor {name:?} is {dtype}, expected F32 or F64")]
    Dtype {
        file: String,
        name: String,
        dtype: String,
    },
    #[error("{file}: tensor {name:?} holds a value that is not finite at index {index}")]
    NotFinite {
        file: String,
        name: String,
        index: usize,
    },
    #[error("the layout has {layout} values, the model {values}")]
    Size { layout: usize, values: usize },
    #[error(
        "{file}: tensor {name:?} is {dtype}; federated tensors are F32 or F64 (save the model \
         after .float()), integer and boolean buffers are kept as they are"
    )]
    Unfederable {
        file: String,
        name: String,
        dtype: String,
    },
    #[error("{file}: no floating-point tensor to federate")]
    NothingToFederate { file: String },
}

/// A tensor of a model that is not federated: an integer or boolean buffer (BatchNorm's
/// `num_batches_tracked`, say). Averaging a counter means nothing, and an update's integer
/// could not be told from a weight; so it is handed to the trainer with every model exactly
/// as the initial model holds it, and ignored in updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

fn kept_bytes(kept: &[KeptTensor]) -> u64 {
    kept.iter().map(|k| k.bytes.len() as u64 + 256).sum()
}

/// An initial model as a file gives it: the federated tensors in the file's order (by their
/// place in its data, the same for everyone holding the same file), their values, and the
/// kept tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    pub layout: Layout,
    /// The dtype each federated tensor has in the file.
    pub dtypes: Vec<Dtype>,
    pub values: Vec<f32>,
    pub kept: Vec<KeptTensor>,
}

/// The largest model file read whole: the largest plan's values (2^27, `MAX_PLAN_VALUES`, which
/// the binary checks this against) as F64, plus room for kept tensors and the header.
pub const MAX_MODEL_FILE_BYTES: u64 = 8 * (1 << 27) + 64 * MAX_HEADER_BYTES;

fn is_federated(dtype: Dtype) -> Option<bool> {
    match dtype {
        Dtype::F32 | Dtype::F64 => Some(true),
        Dtype::BOOL
        | Dtype::U8
        | Dtype::I8
        | Dtype::I16
        | Dtype::U16
        | Dtype::I32
        | Dtype::U32
        | Dtype::I64
        | Dtype::U64 => Some(false),
        _ => None,
    }
}

/// Reads a model file whose tensors are not known in advance (an initial model): every F32
/// and F64 tensor is federated, integer and boolean ones are kept, others refused by name.
pub fn read_model(path: &std::path::Path) -> Result<ModelFile, TensorError> {
    let file = path.display().to_string();
    let unreadable = |e: std::io::Error| TensorError::Read {
        file: file.clone(),
        reason: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    if size > MAX_MODEL_FILE_BYTES {
        return Err(TensorError::TooLarge {
            file,
            size,
            limit: MAX_MODEL_FILE_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    decode_model(&bytes, &file)
}

/// [`read_model`] on bytes already read.
pub fn decode_model(bytes: &[u8], file: &str) -> Result<ModelFile, TensorError> {
    let malformed = |e: safetensors::SafeTensorError| TensorError::Malformed {
        file: file.into(),
        reason: e.to_string(),
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(malformed)?;
    let tensors = SafeTensors::deserialize(bytes).map_err(malformed)?;
    let mut model = ModelFile {
        layout: Vec::new(),
        dtypes: Vec::new(),
        values: Vec::new(),
        kept: Vec::new(),
    };
    // By place in the data, then by name: empty tensors share a place, and a HashMap's order
    // must not decide theirs.
    let mut names: Vec<(usize, String)> = header
        .tensors()
        .into_iter()
        .map(|(name, info)| (info.data_offsets.0, name))
        .collect();
    names.sort();
    for (_, name) in names {
        let view = tensors.tensor(&name).map_err(malformed)?;
        match is_federated(view.dtype()) {
            Some(true) => {
                model.layout.push((name, view.shape().to_vec()));
                model.dtypes.push(view.dtype());
            }
            Some(false) => model.kept.push(KeptTensor {
                name,
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            }),
            None => {
                return Err(TensorError::Unfederable {
                    file: file.into(),
                    name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
        }
    }
    if model.layout.is_empty() {
        return Err(TensorError::NothingToFederate { file: file.into() });
    }
    let layout = model.layout.clone();
    model.values = decode(bytes, &layout, &model.kept, file)?.0;
    Ok(model)
}

/// A layout as errors name it: `weight [2, 30], bias [2]`.
pub fn describe_layout(layout: &Layout) -> String {
    layout
        .iter()
        .map(|(name, shape)| format!("{name} {shape:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The largest file a model of this layout can be (F64 tensors plus the header).
pub fn max_file_bytes(layout: &Layout) -> u64 {
    let values: usize = layout
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    8 * values as u64 + MAX_HEADER_BYTES
}

/// Reads and decodes a file of this layout, refusing one too large for it before reading.
pub fn read_file(
    path: &std::path::Path,
    layout: &Layout,
    kept: &[KeptTensor],
) -> Result<(Vec<f32>, HashMap<String, String>), TensorError> {
    let file = path.display().to_string();
    let unreadable = |e: std::io::Error| TensorError::Read {
        file: file.clone(),
        reason: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    let limit = max_file_bytes(layout) + kept_bytes(kept);
    if size > limit {
        return Err(TensorError::TooLarge { file, size, limit });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    decode(&bytes, layout, kept, &file)
}

/// `values` split into the layout's tensors, as F32, and the kept tensors as they are, with
/// `metadata` in the header.
pub fn encode(
    layout: &Layout,
    values: &[f32],
    kept: &[KeptTensor],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, TensorError> {
    let total: usize = layout
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    if total != values.len() {
        return Err(TensorError::Size {
            layout: total,
            values: values.len(),
        });
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut views = Vec::with_capacity(layout.len());
    let mut offset = 0;
    for (name, shape) in layout {
        let len = 4 * shape.iter().product::<usize>();
        let view = TensorView::new(Dtype::F32, shape.clone(), &bytes[offset..offset + len])
            .map_err(|e| TensorError::Malformed {
                file: name.clone(),
                reason: e.to_string(),
            })?;
        views.push((name.clone(), view));
        offset += len;
    }
    for k in kept {
        let view = TensorView::new(k.dtype, k.shape.clone(), &k.bytes).map_err(|e| {
            TensorError::Malformed {
                file: k.name.clone(),
                reason: e.to_string(),
            }
        })?;
        views.push((k.name.clone(), view));
    }
    safetensors::serialize(views, Some(metadata)).map_err(|e| TensorError::Malformed {
        file: "(writing)".into(),
        reason: e.to_string(),
    })
}

/// The flat values of a file holding exactly the layout's tensors (F32 or F64, finite), and
/// its header's metadata. Tensors named in `kept` may be present and are ignored: they are
/// not federated. `file` names the file in errors.
pub fn decode(
    bytes: &[u8],
    layout: &Layout,
    kept: &[KeptTensor],
    file: &str,
) -> Result<(Vec<f32>, HashMap<String, String>), TensorError> {
    let limit = max_file_bytes(layout) + kept_bytes(kept);
    if bytes.len() as u64 > limit {
        return Err(TensorError::TooLarge {
            file: file.into(),
            size: bytes.len() as u64,
            limit,
        });
    }
    let malformed = |e: safetensors::SafeTensorError| TensorError::Malformed {
        file: file.into(),
        reason: e.to_string(),
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(malformed)?;
    let tensors = SafeTensors::deserialize(bytes).map_err(malformed)?;
    let expected = describe_layout(layout);
    if let Some(name) = tensors
        .names()
        .into_iter()
        .find(|n| !layout.iter().any(|(l, _)| l == n) && !kept.iter().any(|k| k.name == *n))
    {
        return Err(TensorError::Unexpected {
            file: file.into(),
            name: name.to_owned(),
            expected,
        });
    }
    let mut values = Vec::new();
    for (name, shape) in layout {
        let view = tensors.tensor(name).map_err(|_| TensorError::Missing {
            file: file.into(),
            name: name.clone(),
            expected: expected.clone(),
        })?;
        if view.shape() != shape.as_slice() {
            return Err(TensorError::Shape {
                file: file.into(),
                name: name.clone(),
                found: view.shape().to_vec(),
                expected: shape.clone(),
            });
        }
        let start = values.len();
        match view.dtype() {
            Dtype::F32 => values.extend(
                view.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            ),
            Dtype::F64 => values.extend(
                view.data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32),
            ),
            other => {
                return Err(TensorError::Dtype {
                    file: file.into(),
                    name: name.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        }
        if let Some(index) = values[start..].iter().position(|v| !v.is_finite()) {
            return Err(TensorError::NotFinite {
                file: file.into(),
                name: name.clone(),
                index,
            });
        }
    }
    Ok((values, header.metadata().clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        vec![("weight".into(), vec![2, 3]), ("bias".into(), vec![2])]
    }

    #[test]
    fn a_model_round_trips_with_its_metadata() {
        let values: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.0).collect();
        let metadata = HashMap::from([("round".to_string(), "3".to_string())]);
        let bytes = encode(&layout(), &values, &[], metadata.clone()).unwrap();
        let (back, meta) = decode(&bytes, &layout(), &[], "m.safetensors").unwrap();
        assert_eq!(back, values);
        assert_eq!(meta, metadata);
        // The tensors are where PyTorch looks for them.
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let bias = file.tensor("bias").unwrap();
        assert_eq!(bias.shape(), &[2]);
        assert_eq!(bias.data(), [2.0f32, 2.5].map(f32::to_le_bytes).concat());
    }

    #[test]
    fn files_that_do_not_fit_the_layout_are_refused_by_name() {
        let write = |tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>| {
            let views: Vec<(String, TensorView)> = tensors
                .iter()
                .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            safetensors::serialize(views, None).unwrap()
        };
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let weight = ("weight", Dtype::F32, vec![2, 3], f32s(&[0.0; 6]));
        let bias = ("bias", Dtype::F32, vec![2], f32s(&[0.0; 2]));
        let check = |bytes: Vec<u8>| decode(&bytes, &layout(), &[], "u.safetensors").unwrap_err();

        assert!(
            matches!(check(write(vec![weight.clone()])), TensorError::Missing { name, .. } if name == "bias")
        );
        let extra = ("extra", Dtype::F32, vec![1], f32s(&[0.0]));
        assert!(matches!(
            check(write(vec![weight.clone(), bias.clone(), extra])),
            TensorError::Unexpected { name, .. } if name == "extra"
        ));
        let wide = ("weight", Dtype::F32, vec![3, 2], f32s(&[0.0; 6]));
        assert!(matches!(
            check(write(vec![wide, bias.clone()])),
            TensorError::Shape { .. }
        ));
        let half = ("bias", Dtype::F16, vec![2], vec![0; 4]);
        assert!(matches!(
            check(write(vec![weight.clone(), half])),
            TensorError::Dtype { .. }
        ));
        let nan = ("bias", Dtype::F32, vec![2], f32s(&[0.0, f32::NAN]));
        assert!(matches!(
            check(write(vec![weight.clone(), nan])),
            TensorError::NotFinite { index: 1, .. }
        ));
        assert!(matches!(
            check(b"garbage".to_vec()),
            TensorError::Malformed { .. }
        ));
        assert!(matches!(
            check(vec![0; max_file_bytes(&layout()) as usize + 1]),
            TensorError::TooLarge { .. }
        ));
        // F64 from a trainer that computes in double precision is accepted.
        let double = (
            "bias",
            Dtype::F64,
            vec![2],
            [0.25f64, -1.0].map(f64::to_le_bytes).concat(),
        );
        let (values, _) = decode(&write(vec![weight, double]), &layout(), &[], "u").unwrap();
        assert_eq!(&values[6..], &[0.25, -1.0]);
    }

    #[test]
    fn an_initial_model_federates_its_floats_in_file_order_and_keeps_its_integer_buffers() {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let count = 0i64.to_le_bytes().to_vec();
        let tensors = [
            ("conv.weight", Dtype::F32, vec![2, 1], f32s(&[0.5, -0.5])),
            ("bn.running_var", Dtype::F32, vec![1], f32s(&[1.0])),
            ("bn.num_batches_tracked", Dtype::I64, vec![], count.clone()),
        ];
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let model = decode_model(&bytes, "initial.safetensors").unwrap();
        // The file's own order (safetensors sorts by dtype, then name): the same for everyone.
        assert_eq!(
            model.layout,
            vec![
                ("bn.running_var".to_string(), vec![1]),
                ("conv.weight".to_string(), vec![2, 1])
            ]
        );
        assert_eq!(model.values, vec![1.0, 0.5, -0.5]);
        assert_eq!(
            model.kept,
            vec![KeptTensor {
                name: "bn.num_batches_tracked".into(),
                dtype: Dtype::I64,
                shape: vec![],
                bytes: count,
            }]
        );
        // A model written for the trainer carries the kept tensor, so a strict
        // load_state_dict works; an update may carry it back, and it is ignored.
        let written = encode(&model.layout, &model.values, &model.kept, HashMap::new()).unwrap();
        assert_eq!(decode_model(&written, "m").unwrap(), model);
        let (values, _) = decode(&written, &model.layout, &model.kept, "u").unwrap();
        assert_eq!(values, model.values);
        assert!(matches!(
            decode(&written, &model.layout, &[], "u"),
            Err(TensorError::Unexpected { name, .. }) if name == "bn.num_batches_tracked"
        ));
        // Half precision is refused by name rather than federated at a precision the plan
        // does not know.
        let half = [("w", Dtype::F16, vec![1], vec![0u8; 2])];
        let views: Vec<(String, TensorView)> = half
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let err = decode_model(&safetensors::serialize(views, None).unwrap(), "h").unwrap_err();
        assert!(err.to_string().contains(".float()"), "{err}");
    }
}
