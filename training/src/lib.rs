//! Local learning, apart from any network or key: reading tabular data, the built-in
//! deterministic trainer, pooled feature scaling, and models as `safetensors` files. The node
//! calls it to produce an update; the demo calls it for its plaintext baselines. Nothing here
//! sees a ciphertext, a key share or a peer.

pub mod data;
pub mod scaling;
pub mod tensors;
pub mod trainer;
