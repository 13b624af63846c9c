//! The consortium's agreed starting model, pinned in the plan by its digest.
//!
//! A member's network is the initial model plus the global model. If one member starts from
//! other weights (another seed, another file), every member still logs the same global model,
//! and the exported networks differ silently: one member's model is accurate, another's is
//! noise. So the plan carries the initial model's digest, and every member computes the digest
//! of its own initial model and refuses to start on a mismatch. A plan that pins nothing allows
//! only the all-zero initial model, which needs no agreement.

use sha2::{Digest as _, Sha256};

use crate::audit::entry::Digest;

/// The digest of an initial model: its federated tensors' names, shapes and values in the
/// model's order, and any tensors it carries unchanged (integer buffers) with their bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InitialModel(pub Digest);

impl std::fmt::Debug for InitialModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InitialModel({self})")
    }
}

impl std::fmt::Display for InitialModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Why a text is not an initial model's digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("{0:?} is not hex")]
    NotHex(String),
    #[error("{0} bytes of hex, a digest has 32")]
    Length(usize),
}

impl std::str::FromStr for InitialModel {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, DigestParseError> {
        let bytes = hex::decode(s).map_err(|_| DigestParseError::NotHex(s.to_owned()))?;
        let digest: Digest = bytes
            .try_into()
            .map_err(|b: Vec<u8>| DigestParseError::Length(b.len()))?;
        Ok(Self(digest))
    }
}

impl serde::Serialize for InitialModel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for InitialModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A tensor an initial model carries without federating it (an integer buffer such as
/// BatchNorm's `num_batches_tracked`): handed to the trainer as it is, every round.
#[derive(Clone, Copy, Debug)]
pub struct KeptTensor<'a> {
    pub name: &'a str,
    /// The dtype's name in the safetensors header (`I64`, `BOOL`, ...).
    pub dtype: &'a str,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl InitialModel {
    /// The digest of a model: `tensors` in the order of `values` (the order of the flat vector
    /// every member encrypts, so two members that lay out the same tensors differently are told
    /// apart), then the kept tensors in the order of their names.
    pub fn of(tensors: &[(String, Vec<usize>)], values: &[f32], kept: &[KeptTensor]) -> Self {
        let mut h = Sha256::new();
        h.update(b"quorate/initial-model/v1\0");
        let mut start = 0;
        let mut named: Vec<(&str, &[usize], &[f32])> = Vec::with_capacity(tensors.len());
        for (name, shape) in tensors {
            let len: usize = shape.iter().product();
            let end = (start + len).min(values.len());
            named.push((name, shape, &values[start.min(end)..end]));
            start = end;
        }
        h.update((named.len() as u64).to_le_bytes());
        for (name, shape, tensor) in named {
            hash_named(&mut h, name, shape);
            h.update((tensor.len() as u64).to_le_bytes());
            for chunk in tensor.chunks(8192) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                h.update(&bytes);
            }
        }
        // Values beyond the tensors (a model shorter than its list is caught by its size).
        h.update((values.len().saturating_sub(start) as u64).to_le_bytes());
        let mut kept: Vec<&KeptTensor> = kept.iter().collect();
        kept.sort_by(|a, b| a.name.cmp(b.name));
        h.update((kept.len() as u64).to_le_bytes());
        for k in kept {
            hash_named(&mut h, k.name, k.shape);
            h.update((k.dtype.len() as u64).to_le_bytes());
            h.update(k.dtype.as_bytes());
            h.update((k.bytes.len() as u64).to_le_bytes());
            h.update(k.bytes);
        }
        Self(h.finalize().into())
    }
}

fn hash_named(h: &mut Sha256, name: &str, shape: &[usize]) {
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update((shape.len() as u64).to_le_bytes());
    for d in shape {
        h.update((*d as u64).to_le_bytes());
    }
}

/// Why a member will not start from its initial model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitialModelError {
    #[error(
        "this member's initial model is {own}, the plan's is {pinned}: every member must start \
         from the same model (the same file, or the same initial_seed), or their networks \
         differ while the log says they agree"
    )]
    Mismatch {
        pinned: InitialModel,
        own: InitialModel,
    },
    #[error(
        "this member's initial model ({own}) is not all zeros and the plan pins none: add \
         initial_model = \"{own}\" to the plan of the coordinator and of every member, so that \
         each checks it starts from the same model"
    )]
    Unpinned { own: InitialModel },
}

/// Checks a member's own initial model (its tensors, values and kept tensors) against the
/// plan's: the same rule for every member, run before it contributes to any round.
pub fn check_initial_model(
    pinned: Option<&InitialModel>,
    own: InitialModel,
    all_zero: bool,
) -> Result<(), InitialModelError> {
    match pinned {
        Some(pinned) if *pinned == own => Ok(()),
        Some(pinned) => Err(InitialModelError::Mismatch {
            pinned: *pinned,
            own,
        }),
        None if all_zero => Ok(()),
        None => Err(InitialModelError::Unpinned { own }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Vec<(String, Vec<usize>)> {
        vec![("w".into(), vec![2]), ("b".into(), vec![1])]
    }

    #[test]
    fn the_initial_model_digest_is_pinned_by_golden_bytes() {
        // sha256("quorate/initial-model/v1\0" || 2 || (1 "w" 1 2) 2 0.0 0.0 || (1 "b" 1 1) 1
        // 0.0 || 0 || 0), every count a u64 LE, tensors in the flat vector's order.
        let digest = InitialModel::of(&layout(), &[0.0; 3], &[]);
        assert_eq!(
            digest.to_string(),
            "8db946146a4ca05612a52c540e4c52ad83c971c16e6a36aa17fc592ba423b651"
        );
    }

    #[test]
    fn names_shapes_values_and_kept_tensors_all_change_the_digest() {
        let base = InitialModel::of(&layout(), &[0.5, -1.0, 0.0], &[]);
        // The same tensors laid out in another order: another flat vector, another digest.
        let reordered = vec![("b".into(), vec![1]), ("w".into(), vec![2])];
        assert_ne!(base, InitialModel::of(&reordered, &[0.0, 0.5, -1.0], &[]));
        let renamed = vec![("w".into(), vec![2]), ("c".into(), vec![1])];
        let reshaped = vec![("w".into(), vec![1]), ("b".into(), vec![2])];
        let counter = KeptTensor {
            name: "bn.num_batches_tracked",
            dtype: "I64",
            shape: &[],
            bytes: &[0; 8],
        };
        for other in [
            InitialModel::of(&renamed, &[0.5, -1.0, 0.0], &[]),
            InitialModel::of(&reshaped, &[0.5, -1.0, 0.0], &[]),
            InitialModel::of(&layout(), &[0.5, -1.0, -0.0], &[]),
            InitialModel::of(&layout(), &[0.5, -1.0, 0.0], &[counter]),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, InitialModel::of(&layout(), &[0.5, -1.0, 0.0], &[]));
    }

    #[test]
    fn a_member_starting_from_another_model_than_the_plans_is_refused() {
        let agreed = InitialModel::of(&layout(), &[0.5, -1.0, 0.0], &[]);
        let other_seed = InitialModel::of(&layout(), &[0.25, -1.0, 0.0], &[]);
        assert_eq!(check_initial_model(Some(&agreed), agreed, false), Ok(()));
        let err = check_initial_model(Some(&agreed), other_seed, false).unwrap_err();
        assert_eq!(
            err,
            InitialModelError::Mismatch {
                pinned: agreed,
                own: other_seed
            }
        );
        assert!(err.to_string().contains(&agreed.to_string()));
        // Unpinned: only the all-zero model, which every member has without agreeing on it.
        assert_eq!(check_initial_model(None, agreed, true), Ok(()));
        let err = check_initial_model(None, agreed, false).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("initial_model = \"{agreed}\"")),
            "{err}"
        );
    }

    #[test]
    fn the_digest_reads_and_writes_as_hex() {
        let digest = InitialModel::of(&layout(), &[1.0, 2.0, 3.0], &[]);
        let text = serde_json::to_string(&digest).unwrap();
        assert_eq!(text, format!("\"{digest}\""));
        assert_eq!(serde_json::from_str::<InitialModel>(&text).unwrap(), digest);
        let short = "abcd".parse::<InitialModel>().unwrap_err();
        assert_eq!(short, DigestParseError::Length(2));
        assert!(short.to_string().contains("2 bytes"));
        assert!(matches!(
            "zz".parse::<InitialModel>(),
            Err(DigestParseError::NotHex(_))
        ));
    }
}
