//! The validation phases: each member decrypts a challenge per secret of the new key with
//! every quorum it is in, and reports the quorums whose partials do not decrypt them.

use super::*;

impl Participant {
    pub(super) fn after_transcript<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>, Abort> {
        let mine = self.transcript_hash.expect("computed before signing");
        for incoming in self.messages(Phase::TranscriptSignature) {
            if let Body::TranscriptSignature { transcript, .. } = &incoming.message.body
                && *transcript != mine
            {
                return Err(self.fail(
                    Some(incoming.message.sender),
                    "signed a different transcript: the members do not agree on the ceremony",
                ));
            }
        }
        let public_key = self.public_key.as_ref().expect("combined before signing");
        let challenges = validation_challenges(self.config, &mine, public_key)
            .map_err(|e| self.fail(None, e.to_string()))?;
        let share = self.share.as_ref().expect("built before signing");
        // Every secret validated, or none: a key, share or challenge list of another number
        // would leave a secret untested.
        if challenges.len() != SECRETS_PER_KEY || share.secrets() != SECRETS_PER_KEY {
            return Err(self.fail(
                None,
                format!(
                    "{} validation challenges and a share of {} secrets, for a key of {}",
                    challenges.len(),
                    share.secrets(),
                    SECRETS_PER_KEY
                ),
            ));
        }
        let shares = (0..share.secrets())
            .map(|secret| share.secret(secret))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(None, e.to_string()))?;
        // For each quorum, one partial per secret, in the secrets' order.
        let mut partials = Vec::new();
        for quorum in t_subsets(self.config)
            .into_iter()
            .filter(|q| q.contains(self.me))
        {
            let members: Vec<u8> = quorum.members().collect();
            let quorum_set =
                Quorum::new(&self.config, members).map_err(|e| self.fail(None, e.to_string()))?;
            for (challenge, share) in challenges.iter().zip(&shares) {
                let partial = share
                    .partial_decrypt(&challenge.ciphertext, &quorum_set, &challenge.budget, rng)
                    .map_err(|e| self.fail(None, e.to_string()))?;
                partials.push((quorum.0, encode_partial_decryption(&partial)));
            }
        }
        self.challenges = challenges;
        Ok(vec![self.sign(
            self.ceremony(),
            Body::ValidationShares { partials },
        )])
    }

    pub(super) fn after_validation_shares(&mut self) -> Result<Vec<Outgoing>, Abort> {
        let shares: Vec<&Body> = self
            .messages(Phase::ValidationShares)
            .iter()
            .map(|i| &i.message.body)
            .collect();
        if self.challenges.len() != SECRETS_PER_KEY {
            return Err(self.fail(None, "validation shares arrived before the challenges"));
        }
        let failures = validation_failures(&self.challenges, self.config, &shares);
        Ok(vec![self.sign(
            self.ceremony(),
            Body::ValidationReport { failures },
        )])
    }
}
