//! The consortium file: who the members are, their keys and addresses, and the parameters
//! they agreed on. Every member signs its canonical digest; nothing proceeds on a file that is
//! unsigned or only partly signed.
//!
//! The digest is that of the membership manifest the audit log records (every field but the
//! approvals, in a canonical binary encoding rather than the TOML text, whose whitespace and
//! key order carry no meaning), so what members approve is exactly what the log holds.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::audit::entry::{CoordinatorKeys, Digest, Member, Membership, approval_message};
use crate::audit::log::safe_witness_quorum;
use crate::he::{MAX_PARTIES, ParameterSet, ThresholdConfig};

/// The name of member `index` (0-based) in a rehearsed consortium: `member-a`, `member-b`, ...
/// up to the scheme's [`MAX_PARTIES`].
pub fn rehearsal_member_name(index: u8) -> String {
    assert!(index < MAX_PARTIES, "at most {MAX_PARTIES} members");
    format!("member-{}", char::from(b'a' + index))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsortiumError {
    #[error("consortium file is not valid TOML: {0}")]
    Toml(String),
    #[error("consortium file, field {field}: {reason}")]
    Field { field: String, reason: String },
    #[error("consortium file is not approved by {0}")]
    NotApproved(String),
    #[error("consortium file: the approval of {0} does not verify")]
    BadApproval(String),
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> ConsortiumError {
    ConsortiumError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The coordinator's public identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorEntry {
    pub name: String,
    /// Hex Ed25519 key that signs the coordinator's log entries.
    pub signing_key: String,
    /// Hex Ed25519 key that signs checkpoints.
    pub log_key: String,
    /// libp2p PeerId.
    pub peer_id: String,
    /// libp2p multiaddress.
    pub address: String,
}

/// One member's public identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    pub name: String,
    /// Hex Ed25519 key that signs the member's entries and ceremony messages.
    pub signing_key: String,
    /// Hex Ed25519 key that cosigns checkpoints.
    pub witness_key: String,
    pub peer_id: String,
    pub address: String,
}

/// The consortium file as written in TOML.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsortiumFile {
    pub name: String,
    pub parameter_set: String,
    pub threshold: u8,
    pub k_min: u8,
    /// Accept `k_min <= threshold`: t - 1 colluding members and the coordinator can then read
    /// one member's update exactly. Only for consortia that cannot meet `k_min >= t + 1`
    /// (t = n, such as any consortium of two) and whose members all accept that.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_small_aggregates: bool,
    /// Cosignatures a checkpoint needs; defaults to the smallest fork-safe quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_quorum: Option<u8>,
    pub coordinator: CoordinatorEntry,
    pub members: Vec<MemberEntry>,
    /// Member name to hex Ed25519 signature over the consortium digest.
    #[serde(default)]
    pub approvals: BTreeMap<String, String>,
}

/// A validated consortium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consortium {
    file: ConsortiumFile,
    config: ThresholdConfig,
    witness_quorum: u8,
    digest: Digest,
}

fn key(path: &str, hex_key: &str) -> Result<VerifyingKey, ConsortiumError> {
    let bytes = hex::decode(hex_key).map_err(|_| field(path, "not hexadecimal"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| field(path, "an Ed25519 key is 32 bytes (64 hex digits)"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| field(path, "not a valid Ed25519 public key"))
}

fn check_name(path: &str, name: &str) -> Result<(), ConsortiumError> {
    if name.is_empty() || name.len() > 64 {
        return Err(field(path, "must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(field(
            path,
            format!("{name:?} may hold only letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

impl Consortium {
    pub fn parse(text: &str) -> Result<Self, ConsortiumError> {
        let file: ConsortiumFile =
            toml::from_str(text).map_err(|e| ConsortiumError::Toml(e.to_string()))?;
        Self::from_file(file)
    }

    pub fn from_file(file: ConsortiumFile) -> Result<Self, ConsortiumError> {
        check_name("name", &file.name)?;
        ParameterSet::by_id(&file.parameter_set)
            .map_err(|e| field("parameter_set", e.to_string()))?;
        let n = file.members.len();
        if n < 2 || n > usize::from(MAX_PARTIES) {
            return Err(field(
                "members",
                format!("{n} members; between 2 and {MAX_PARTIES} are supported"),
            ));
        }
        let config = ThresholdConfig::new(n as u8, file.threshold)
            .map_err(|e| field("threshold", e.to_string()))?;
        crate::audit::log::check_k_min(
            n as u8,
            file.threshold,
            file.k_min,
            file.accept_small_aggregates,
        )
        .map_err(|e| field("k_min", e.to_string()))?;
        let safe = safe_witness_quorum(n as u8, file.threshold);
        let witness_quorum = file.witness_quorum.unwrap_or(safe);
        if witness_quorum < safe || usize::from(witness_quorum) > n {
            return Err(field(
                "witness_quorum",
                format!(
                    "{witness_quorum} is unsafe: with up to t - 1 = {} colluding members, forks are \
                     impossible only if it is at least {safe} (and at most {n})",
                    file.threshold - 1
                ),
            ));
        }
        check_name("coordinator.name", &file.coordinator.name)?;
        let mut keys = vec![
            key("coordinator.signing_key", &file.coordinator.signing_key)?,
            key("coordinator.log_key", &file.coordinator.log_key)?,
        ];
        let mut names = vec![file.coordinator.name.clone()];
        let mut peers = vec![file.coordinator.peer_id.clone()];
        if file.coordinator.peer_id.is_empty() {
            return Err(field("coordinator.peer_id", "missing"));
        }
        if file.coordinator.address.is_empty() {
            return Err(field("coordinator.address", "missing"));
        }
        for (i, member) in file.members.iter().enumerate() {
            let path = |f: &str| format!("members[{i}].{f}");
            check_name(&path("name"), &member.name)?;
            if names.contains(&member.name) {
                return Err(field(
                    path("name"),
                    format!("{:?} is used twice", member.name),
                ));
            }
            names.push(member.name.clone());
            keys.push(key(&path("signing_key"), &member.signing_key)?);
            keys.push(key(&path("witness_key"), &member.witness_key)?);
            if member.peer_id.is_empty() || peers.contains(&member.peer_id) {
                return Err(field(path("peer_id"), "missing or used twice"));
            }
            peers.push(member.peer_id.clone());
            if member.address.is_empty() {
                return Err(field(path("address"), "missing"));
            }
        }
        let mut distinct = keys.iter().map(|k| k.to_bytes()).collect::<Vec<_>>();
        distinct.sort();
        distinct.dedup();
        if distinct.len() != keys.len() {
            return Err(field("members", "a public key appears twice"));
        }
        for name in file.approvals.keys() {
            if !file.members.iter().any(|m| &m.name == name) {
                return Err(field(format!("approvals.{name}"), "not a member"));
            }
        }
        let digest = unapproved_membership(&file, witness_quorum).digest();
        Ok(Self {
            file,
            config,
            witness_quorum,
            digest,
        })
    }

    /// The origin of the consortium's audit log: the first line of every checkpoint, so a
    /// checkpoint of one consortium can never be taken for another's.
    pub fn log_origin(&self) -> String {
        format!("quorate/{}", self.file().name)
    }

    pub fn file(&self) -> &ConsortiumFile {
        &self.file
    }

    pub fn config(&self) -> ThresholdConfig {
        self.config
    }

    pub fn witness_quorum(&self) -> u8 {
        self.witness_quorum
    }

    /// What every member signs.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn member_index(&self, name: &str) -> Option<u8> {
        self.file
            .members
            .iter()
            .position(|m| m.name == name)
            .map(|i| i as u8)
    }

    pub fn member_signing_key(&self, index: u8) -> VerifyingKey {
        key("", &self.file.members[usize::from(index)].signing_key).expect("validated")
    }

    /// Adds (or replaces) one member's approval.
    pub fn with_approval(mut self, member: &str, signature: &[u8; 64]) -> Self {
        self.file
            .approvals
            .insert(member.to_owned(), hex::encode(signature));
        self
    }

    /// Members whose approval verifies against this exact file (an approval of an earlier
    /// version, or one not made with the member's key, does not count).
    pub fn valid_approvals(&self) -> Vec<String> {
        let message = approval_message(&self.digest);
        self.file
            .members
            .iter()
            .enumerate()
            .filter(|(i, member)| {
                self.file
                    .approvals
                    .get(&member.name)
                    .and_then(|hex_signature| hex::decode(hex_signature).ok())
                    .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
                    .is_some_and(|signature| {
                        self.member_signing_key(*i as u8)
                            .verify_strict(&message, &Signature::from_bytes(&signature))
                            .is_ok()
                    })
            })
            .map(|(_, member)| member.name.clone())
            .collect()
    }

    /// Members that may be down with rounds still completing (see
    /// [`crate::audit::log::sites_down_tolerated`]).
    pub fn sites_down_tolerated(&self) -> u8 {
        crate::audit::log::sites_down_tolerated(
            self.file.members.len() as u8,
            self.file.k_min,
            self.witness_quorum,
        )
    }

    /// Checks that every member approved this exact consortium.
    pub fn check_approvals(&self) -> Result<(), ConsortiumError> {
        let message = approval_message(&self.digest);
        for (i, member) in self.file.members.iter().enumerate() {
            let hex_signature = self
                .file
                .approvals
                .get(&member.name)
                .ok_or_else(|| ConsortiumError::NotApproved(member.name.clone()))?;
            let signature: [u8; 64] = hex::decode(hex_signature)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ConsortiumError::BadApproval(member.name.clone()))?;
            self.member_signing_key(i as u8)
                .verify_strict(&message, &Signature::from_bytes(&signature))
                .map_err(|_| ConsortiumError::BadApproval(member.name.clone()))?;
        }
        Ok(())
    }

    /// The membership manifest entry body for the audit log (approvals must be complete).
    pub fn membership(&self) -> Result<Membership, ConsortiumError> {
        self.check_approvals()?;
        let mut membership = unapproved_membership(&self.file, self.witness_quorum);
        membership.approvals = self
            .file
            .members
            .iter()
            .map(|m| {
                hex::decode(&self.file.approvals[&m.name])
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .expect("checked above")
            })
            .collect();
        Ok(membership)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.file).expect("a consortium file serialises")
    }
}

fn decode_key(hex_key: &str) -> [u8; 32] {
    key("", hex_key).expect("validated").to_bytes()
}

/// The consortium as the log records it, without approvals; its digest is what members sign.
fn unapproved_membership(file: &ConsortiumFile, witness_quorum: u8) -> Membership {
    Membership {
        name: file.name.clone(),
        parameter_set: file.parameter_set.clone(),
        threshold: file.threshold,
        k_min: file.k_min,
        accept_small_aggregates: file.accept_small_aggregates,
        witness_quorum,
        coordinator: CoordinatorKeys {
            name: file.coordinator.name.clone(),
            signing_key: decode_key(&file.coordinator.signing_key),
            log_key: decode_key(&file.coordinator.log_key),
            peer_id: file.coordinator.peer_id.clone(),
            address: file.coordinator.address.clone(),
        },
        members: file
            .members
            .iter()
            .map(|m| Member {
                name: m.name.clone(),
                signing_key: decode_key(&m.signing_key),
                witness_key: decode_key(&m.witness_key),
                peer_id: m.peer_id.clone(),
                address: m.address.clone(),
            })
            .collect(),
        approvals: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn keys(seed: u8) -> (SigningKey, String) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let public = hex::encode(key.verifying_key().to_bytes());
        (key, public)
    }

    fn sample_text(members: usize, threshold: u8) -> (String, Vec<SigningKey>) {
        let k_min = threshold + 1;
        let (_, coordinator) = keys(200);
        let (_, log) = keys(201);
        let mut text = format!(
            "name = \"test-consortium\"\nparameter_set = \"quorate-rlwe128-v1\"\nthreshold = {threshold}\nk_min = {k_min}\n\n\
             [coordinator]\nname = \"coordinator\"\nsigning_key = \"{coordinator}\"\nlog_key = \"{log}\"\n\
             peer_id = \"peer-c\"\naddress = \"/ip4/127.0.0.1/tcp/9000\"\n"
        );
        let mut signing = Vec::new();
        for i in 0..members {
            let (key, public) = keys(i as u8 + 1);
            let (_, witness) = keys(i as u8 + 100);
            text.push_str(&format!(
                "\n[[members]]\nname = \"member-{i}\"\nsigning_key = \"{public}\"\nwitness_key = \"{witness}\"\n\
                 peer_id = \"peer-{i}\"\naddress = \"/ip4/127.0.0.1/tcp/{}\"\n",
                9001 + i
            ));
            signing.push(key);
        }
        (text, signing)
    }

    /// `ceremony sign` counts these: an approval of an earlier version of the file, or one not
    /// made with the member's key, does not count.
    #[test]
    fn only_approvals_of_this_exact_file_count() {
        let (text, signing) = sample_text(3, 2);
        let mut consortium = Consortium::parse(&text).unwrap();
        let message = approval_message(&consortium.digest());
        for (i, key) in signing.iter().enumerate().take(2) {
            consortium =
                consortium.with_approval(&format!("member-{i}"), &key.sign(&message).to_bytes());
        }
        assert_eq!(consortium.valid_approvals(), ["member-0", "member-1"]);
        // member-2's "approval" signed by member-0's key is not member-2's.
        let forged = consortium.with_approval("member-2", &signing[0].sign(&message).to_bytes());
        assert_eq!(forged.valid_approvals(), ["member-0", "member-1"]);
        // After an edit (here the name), the earlier approvals no longer verify.
        let renamed =
            Consortium::parse(&forged.to_toml().replace("test-consortium", "renamed")).unwrap();
        assert!(
            renamed.valid_approvals().is_empty(),
            "a renamed file is another file"
        );
    }

    #[test]
    fn parses_validates_and_collects_approvals() {
        let (text, signing) = sample_text(5, 3);
        let mut consortium = Consortium::parse(&text).unwrap();
        assert_eq!(consortium.witness_quorum(), 4);
        assert!(matches!(
            consortium.check_approvals(),
            Err(ConsortiumError::NotApproved(_))
        ));
        let message = approval_message(&consortium.digest());
        for (i, key) in signing.iter().enumerate() {
            consortium =
                consortium.with_approval(&format!("member-{i}"), &key.sign(&message).to_bytes());
        }
        consortium.check_approvals().unwrap();
        let membership = consortium.membership().unwrap();
        crate::audit::log::check_membership(&membership).unwrap();
        // Round trip through TOML keeps the digest and the approvals.
        let again = Consortium::parse(&consortium.to_toml()).unwrap();
        assert_eq!(again.digest(), consortium.digest());
        again.check_approvals().unwrap();
        // A wrong approval is named.
        let bad = again.with_approval("member-1", &signing[0].sign(&message).to_bytes());
        assert_eq!(
            bad.check_approvals(),
            Err(ConsortiumError::BadApproval("member-1".into()))
        );
    }

    #[test]
    fn any_change_changes_the_digest() {
        let (text, _) = sample_text(3, 2);
        let digest = Consortium::parse(&text).unwrap().digest();
        for (from, to) in [
            ("9001", "9009"),
            ("test-consortium", "other"),
            ("k_min = 3", "k_min = 2\naccept_small_aggregates = true"),
        ] {
            let changed = Consortium::parse(&text.replacen(from, to, 1)).unwrap();
            assert_ne!(changed.digest(), digest, "{from} -> {to}");
        }
    }

    #[test]
    fn validation_errors_name_the_field() {
        let (text, _) = sample_text(3, 2);
        let cases = [
            (text.replace("threshold = 2", "threshold = 4"), "threshold"),
            (text.replace("k_min = 3", "k_min = 9"), "k_min"),
            (
                text.replace("k_min = 3", "k_min = 3\nwitness_quorum = 1"),
                "witness_quorum",
            ),
            (
                text.replace("name = \"member-1\"", "name = \"member-0\""),
                "members[1].name",
            ),
            (
                text.replace("peer_id = \"peer-2\"", "peer_id = \"peer-1\""),
                "members[2].peer_id",
            ),
            (
                text.replace("quorate-rlwe128-v1", "other-v9"),
                "parameter_set",
            ),
            (
                text.replace("name = \"member-2\"", "name = \"member 2\""),
                "members[2].name",
            ),
            (
                text.replacen("signing_key = \"", "signing_key = \"zz", 2),
                "signing_key",
            ),
            (
                text.replace("[coordinator]", "bogus = 1\n[coordinator]"),
                "bogus",
            ),
        ];
        for (bad, expected) in cases {
            let err = Consortium::parse(&bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let (eleven, _) = sample_text(11, 3);
        assert!(
            Consortium::parse(&eleven)
                .unwrap_err()
                .to_string()
                .contains("members")
        );
        // A key used twice (a member's witness key equal to its signing key).
        let (_, dup) = keys(1);
        let (_, witness) = keys(100);
        let err = Consortium::parse(&text.replace(&witness, &dup))
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
    }

    /// Attack 3 of the release policy: with k_min = t, the t - 1 colluders contribute zeros and
    /// the coordinator closes on them and one honest member, whose update is then decrypted.
    #[test]
    fn k_min_at_most_the_threshold_is_refused_unless_accepted_explicitly() {
        let (text, _) = sample_text(3, 2);
        let err = Consortium::parse(&text.replace("k_min = 3", "k_min = 2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("field k_min"), "{err}");
        assert!(err.contains("at least the threshold plus one (3)"), "{err}");
        let accepted = Consortium::parse(
            &text.replace("k_min = 3", "k_min = 2\naccept_small_aggregates = true"),
        )
        .unwrap();
        assert!(
            unapproved_membership(&accepted.file, accepted.witness_quorum).accept_small_aggregates
        );
        // A consortium of two can never meet the rule: the error says how to opt in.
        let (two, _) = sample_text(2, 2);
        let err = Consortium::parse(&two).unwrap_err().to_string();
        assert!(
            err.contains("between 2 and the number of members (2)"),
            "{err}"
        );
        let err = Consortium::parse(&two.replace("k_min = 3", "k_min = 2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("accept_small_aggregates = true"), "{err}");
        Consortium::parse(&two.replace("k_min = 3", "k_min = 2\naccept_small_aggregates = true"))
            .unwrap();
    }
}
