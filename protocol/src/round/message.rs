//! The round protocol's messages: one request type and one response type, each with a
//! versioned header and the id of the request it belongs to. Ciphertexts and partial
//! decryptions travel in chunks of at most [`CHUNK_BYTES`], so no message is larger than
//! [`MAX_MESSAGE_BYTES`]. Each whole is checked against the digest its author signed into the
//! log, and nothing is used before that check.
//!
//! Version 2 dropped the digests of each chunk that offers and fetched data carried: the
//! uploader chose them, so they could never refuse what the whole digest accepts, and
//! computing and checking them was a sixth of all hashing in a round (BENCHMARKS.md).

use crate::audit::entry::{Digest, MAX_ENTRY_BYTES};
use crate::bytes::{ReadError, Reader, Writer};

/// The rounds' protocol name on the transport: the node, the coordinator and anything that
/// speaks to them (tests playing a coordinator) use this one constant.
pub const PROTOCOL: &str = "/quorate/round/1";

const MAGIC: &[u8; 4] = b"QRND";
const VERSION: u8 = 2;
/// Bytes of ciphertext or partial decryption per chunk.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// No round message is larger.
pub const MAX_MESSAGE_BYTES: usize = CHUNK_BYTES + 64 * 1024;
/// Most entries one witness request carries (a catching-up member asks again).
pub const MAX_ENTRIES_PER_MESSAGE: usize = 256;
const MAX_NOTE_BYTES: u64 = 16 * 1024;
const MAX_REASON_BYTES: u64 = 1024;
/// Chunks of one artefact at most (4 GiB).
pub const MAX_CHUNKS: u64 = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Coordinator to member: the log's entries from leaf `from`, and a checkpoint of the
    /// whole log to witness. The member answers with its cosignature.
    Witness {
        from: u64,
        entries: Vec<Vec<u8>>,
        note: Vec<u8>,
    },
    /// Coordinator to member: a checkpoint with a quorum of cosignatures; the member acts on
    /// the entries it covers.
    Act { note: Vec<u8> },
    /// Member to coordinator: a signed contribution entry, and the length of the ciphertext
    /// it names.
    Offer { entry: Vec<u8>, length: u64 },
    /// Member to coordinator: one chunk of an offered ciphertext.
    Chunk {
        ciphertext: Digest,
        index: u32,
        bytes: Vec<u8>,
    },
    /// Member to coordinator: a signed entry to append (share released, result, incident).
    Append { entry: Vec<u8> },
    /// Member to coordinator: a chunk of a stored ciphertext.
    Fetch { ciphertext: Digest, index: u32 },
    /// Member to member: one chunk of a partial decryption for the request at leaf `request`.
    /// The whole must hash to the share digest its author logged.
    Partial {
        request: u64,
        index: u32,
        count: u32,
        bytes: Vec<u8>,
    },
    /// Member to member: a signed incident entry its author also appended through the
    /// coordinator, so that the coordinator cannot keep members from hearing of it.
    Incident { entry: Vec<u8> },
    /// Coordinator to member: the coordinator's run is over after round `last_round` (it
    /// stops once the log is published); a member with nothing left to do for it may exit.
    Finished { last_round: u64 },
    /// Member to member: send again the partial decryption for the request at leaf `request`
    /// whose release you logged (the same bytes: nothing new is revealed). A member whose copy
    /// never arrived, or who was away during the decryption, asks with this.
    Resend { request: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Ok,
    /// The witness's cosignature line and its log size after the update.
    Cosigned {
        size: u64,
        line: String,
    },
    /// The member's copy of the log has `size` entries: send from there.
    Behind {
        size: u64,
    },
    /// The entry is acknowledged at this leaf.
    Appended {
        leaf: u64,
    },
    /// A chunk, and the total length of the artefact.
    Data {
        length: u64,
        bytes: Vec<u8>,
    },
    Refused {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("not a round message")]
    Magic,
    #[error("unsupported round message version {0}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error(transparent)]
    Read(#[from] ReadError),
}

fn start(id: u64, kind: u8) -> Writer {
    let mut w = Writer::default();
    w.bytes(MAGIC).u8(VERSION).u64(id).u8(kind);
    w
}

fn blob(w: &mut Writer, bytes: &[u8]) {
    w.u32(bytes.len() as u32).bytes(bytes);
}

fn open(bytes: &[u8]) -> Result<(Reader<'_>, u64, u8), MessageError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge(bytes.len()));
    }
    let mut r = Reader::new(bytes);
    if r.array::<4>("magic")? != *MAGIC {
        return Err(MessageError::Magic);
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(MessageError::Version(version));
    }
    let id = r.u64("request id")?;
    let kind = r.u8("kind")?;
    Ok((r, id, kind))
}

fn read_blob(r: &mut Reader<'_>, field: &'static str, limit: u64) -> Result<Vec<u8>, ReadError> {
    let len = r.count(field, 4, limit)?;
    Ok(r.take(field, len)?.to_vec())
}

impl Request {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Request::Witness { .. } => "witness",
            Request::Act { .. } => "act",
            Request::Offer { .. } => "offer",
            Request::Chunk { .. } => "chunk",
            Request::Append { .. } => "append",
            Request::Fetch { .. } => "fetch",
            Request::Partial { .. } => "partial",
            Request::Incident { .. } => "incident",
            Request::Finished { .. } => "finished",
            Request::Resend { .. } => "resend",
        }
    }

    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut w;
        match self {
            Request::Witness {
                from,
                entries,
                note,
            } => {
                w = start(id, 1);
                w.u64(*from).u32(entries.len() as u32);
                for entry in entries {
                    blob(&mut w, entry);
                }
                blob(&mut w, note);
            }
            Request::Act { note } => {
                w = start(id, 2);
                blob(&mut w, note);
            }
            Request::Offer { entry, length } => {
                w = start(id, 3);
                blob(&mut w, entry);
                w.u64(*length);
            }
            Request::Chunk {
                ciphertext,
                index,
                bytes,
            } => {
                w = start(id, 4);
                w.bytes(ciphertext).u32(*index);
                blob(&mut w, bytes);
            }
            Request::Append { entry } => {
                w = start(id, 5);
                blob(&mut w, entry);
            }
            Request::Fetch { ciphertext, index } => {
                w = start(id, 6);
                w.bytes(ciphertext).u32(*index);
            }
            Request::Partial {
                request,
                index,
                count,
                bytes,
            } => {
                w = start(id, 7);
                w.u64(*request).u32(*index).u32(*count);
                blob(&mut w, bytes);
            }
            Request::Incident { entry } => {
                w = start(id, 8);
                blob(&mut w, entry);
            }
            Request::Finished { last_round } => {
                w = start(id, 9);
                w.u64(*last_round);
            }
            Request::Resend { request } => {
                w = start(id, 10);
                w.u64(*request);
            }
        }
        w.into_bytes()
    }

    /// Decodes a request and its id; every length is checked before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<(u64, Request), MessageError> {
        let (mut r, id, kind) = open(bytes)?;
        let entry_limit = MAX_ENTRY_BYTES as u64;
        let chunk_limit = CHUNK_BYTES as u64;
        let request = match kind {
            1 => {
                let from = r.u64("from")?;
                let count = r.count("entries", 4, MAX_ENTRIES_PER_MESSAGE as u64)?;
                let entries = (0..count)
                    .map(|_| read_blob(&mut r, "entry", entry_limit))
                    .collect::<Result<_, _>>()?;
                let note = read_blob(&mut r, "note", MAX_NOTE_BYTES)?;
                Request::Witness {
                    from,
                    entries,
                    note,
                }
            }
            2 => Request::Act {
                note: read_blob(&mut r, "note", MAX_NOTE_BYTES)?,
            },
            3 => Request::Offer {
                entry: read_blob(&mut r, "entry", entry_limit)?,
                length: r.u64("length")?,
            },
            4 => Request::Chunk {
                ciphertext: r.array("ciphertext")?,
                index: r.u32("chunk index")?,
                bytes: read_blob(&mut r, "chunk", chunk_limit)?,
            },
            5 => Request::Append {
                entry: read_blob(&mut r, "entry", entry_limit)?,
            },
            6 => Request::Fetch {
                ciphertext: r.array("ciphertext")?,
                index: r.u32("chunk index")?,
            },
            7 => Request::Partial {
                request: r.u64("request")?,
                index: r.u32("chunk index")?,
                count: r.u32("chunk count")?,
                bytes: read_blob(&mut r, "chunk", chunk_limit)?,
            },
            8 => Request::Incident {
                entry: read_blob(&mut r, "entry", entry_limit)?,
            },
            9 => Request::Finished {
                last_round: r.u64("last round")?,
            },
            10 => Request::Resend {
                request: r.u64("request")?,
            },
            other => return Err(MessageError::Kind(other)),
        };
        r.finish("request")?;
        Ok((id, request))
    }
}

impl Response {
    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut w;
        match self {
            Response::Ok => w = start(id, 1),
            Response::Cosigned { size, line } => {
                w = start(id, 2);
                w.u64(*size).string(line);
            }
            Response::Behind { size } => {
                w = start(id, 3);
                w.u64(*size);
            }
            Response::Appended { leaf } => {
                w = start(id, 4);
                w.u64(*leaf);
            }
            Response::Data { length, bytes } => {
                w = start(id, 5);
                w.u64(*length);
                blob(&mut w, bytes);
            }
            Response::Refused { reason } => {
                w = start(id, 6);
                let mut end = reason.len().min(MAX_REASON_BYTES as usize);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                w.string(&reason[..end]);
            }
        }
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<(u64, Response), MessageError> {
        let (mut r, id, kind) = open(bytes)?;
        let response = match kind {
            1 => Response::Ok,
            2 => Response::Cosigned {
                size: r.u64("size")?,
                line: r.string("cosignature", MAX_NOTE_BYTES)?,
            },
            3 => Response::Behind {
                size: r.u64("size")?,
            },
            4 => Response::Appended {
                leaf: r.u64("leaf")?,
            },
            5 => Response::Data {
                length: r.u64("length")?,
                bytes: read_blob(&mut r, "chunk", CHUNK_BYTES as u64)?,
            },
            6 => Response::Refused {
                reason: r.string("reason", MAX_REASON_BYTES)?,
            },
            other => return Err(MessageError::Kind(other)),
        };
        r.finish("response")?;
        Ok((id, response))
    }
}
