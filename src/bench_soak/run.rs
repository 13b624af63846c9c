//! One soaked consortium: its processes (`Site`), the faults injected into them one at a time,
//! the wait for recovery after each, and the judgement of its log once its run is ended.

use super::*;

struct Site {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Site {
    fn start(&mut self, exe: &Path, fault: Option<&str>) -> Result<()> {
        self.starts += 1;
        let log = self.dir.join(format!("log.{}", self.starts));
        let path = |file: &str| self.dir.join(file).to_string_lossy().into_owned();
        let mut args: Vec<String> = if self.name == "coordinator" {
            vec![
                "coordinator".into(),
                "run".into(),
                "--config".into(),
                path("coordinator.toml"),
                "--summary".into(),
                path("summary.json"),
            ]
        } else {
            vec![
                "node".into(),
                "run".into(),
                "--config".into(),
                path("node.toml"),
                "--summary".into(),
                path("summary.json"),
                "--round-report".into(),
                path("rounds.jsonl"),
            ]
        };
        if let Some(fault) = fault {
            args.extend(["--fault".into(), fault.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.child = Some(spawn(exe, &args, &log)?);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-s", signal, &child.id().to_string()])
                .status();
        }
    }

    /// The exit status, if the process ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The last round this member reported decrypted.
    fn last_round(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("rounds.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|v| v["round"].as_u64())
            .max()
            .unwrap_or(0)
    }
}

/// One consortium's deployment and its processes: the coordinator first, then the members.
pub(super) struct Run {
    exe: PathBuf,
    dir: PathBuf,
    plan: RoundPlan,
    sites: Vec<Site>,
    /// The run reached its plan's last rounds and its processes ended on their own.
    over: bool,
}

impl Run {
    pub(super) fn start(exe: &Path, args: &SoakBenchArgs, dir: &Path) -> Result<Self> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let members = rehearse(
            exe,
            args.institutions,
            args.threshold,
            dir,
            Some(&dir.with_extension("rehearsal.log")),
        )?;
        // Rounds open every ROUND_INTERVAL through every fault and the wait for recovery; 8
        // fractional bits leave the noise budget room for this many rounds of one key.
        let rounds = 300;
        let plan = RoundPlan {
            values: args.values,
            rounds: rounds as u32,
            fraction_bits: 8,
            ..RoundPlan::default()
        }
        .sized();
        write_deployment_configs(dir, &members, &plan, rounds, args.deadline_secs)?;
        crate::local::edit_coordinator_config(dir, |c| {
            c.insert(
                "release_timeout_secs".into(),
                toml::Value::Integer(args.deadline_secs as i64),
            );
            c.insert(
                "round_interval_ms".into(),
                toml::Value::Integer(ROUND_INTERVAL_MS as i64),
            );
        })?;
        let mut sites: Vec<Site> = std::iter::once("coordinator".to_owned())
            .chain(members)
            .map(|name| Site {
                dir: dir.join(&name),
                name,
                child: None,
                starts: 0,
            })
            .collect();
        for site in &mut sites {
            site.start(exe, None)?;
        }
        Ok(Self {
            exe: exe.to_owned(),
            dir: dir.to_owned(),
            plan,
            sites,
            over: false,
        })
    }

    fn members(&self) -> std::ops::Range<usize> {
        1..self.sites.len()
    }

    /// The last round every member reported decrypted, and the last any did.
    fn progress(&self) -> (u64, u64) {
        let rounds: Vec<u64> = self.members().map(|i| self.sites[i].last_round()).collect();
        (
            rounds.iter().copied().min().unwrap_or(0),
            rounds.iter().copied().max().unwrap_or(0),
        )
    }

    /// Restarts any process that ended on its own (an armed fault firing, or a crash).
    fn restart_exited(&mut self, kinds: &mut BTreeMap<&'static str, KindReport>) -> Result<u32> {
        let mut fired = 0;
        // Near the plan's end a process that exits on its own is done, not crashed: the waits
        // of one fault can outlast the margin the injection leaves.
        let near_end = self.progress().1 + PLAN_MARGIN >= u64::from(self.plan.rounds);
        for site in &mut self.sites {
            let Some(status) = site.exited() else {
                continue;
            };
            // Exit 3 is a finished run with some round not decrypted (a restarted
            // coordinator's summary adds up the earlier runs', whose faults cost rounds).
            if near_end && (status.success() || status.code() == Some(3)) {
                self.over = true;
                continue;
            }
            // An injected abort is SIGABRT; anything else is a crash nobody asked for.
            if std::os::unix::process::ExitStatusExt::signal(&status) == Some(6) {
                fired += 1;
            } else {
                kinds.get_mut("unexpected exit").expect("a kind").faults += 1;
                eprintln!("soak: {} exited on its own ({status})", site.name);
            }
            site.start(&self.exe, None)?;
        }
        Ok(fired)
    }

    /// Waits until every member has decrypted two rounds past `round`, restarting what ends.
    fn recover(
        &mut self,
        args: &SoakBenchArgs,
        round: u64,
        kinds: &mut BTreeMap<&'static str, KindReport>,
    ) -> Result<bool> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(args.recovery_timeout_secs) {
            self.restart_exited(kinds)?;
            if self.over || self.progress().0 >= round + 2 {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    }

    /// Injects `faults` faults one after the other; returns how many, and whether the
    /// consortium got stuck (then it stops early).
    pub(super) fn inject(
        &mut self,
        args: &SoakBenchArgs,
        faults: u32,
        rng: &mut ChaCha20Rng,
        kinds: &mut BTreeMap<&'static str, KindReport>,
    ) -> Result<(u32, bool)> {
        // Rounds running before the first fault.
        if !self.recover(args, 0, kinds)? {
            bail!("the consortium in {} never got going", self.dir.display());
        }
        let counted = |kinds: &BTreeMap<&'static str, KindReport>| -> u32 {
            kinds
                .iter()
                .filter(|(name, _)| !matches!(**name, "armed step not reached" | "unexpected exit"))
                .map(|(_, k)| k.faults)
                .sum()
        };
        let before = counted(kinds);
        let mut injected = 0;
        while injected < faults {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
            let (_, round) = self.progress();
            // A run ends before its plan's rounds do; the next consortium takes the rest.
            if self.over || round + PLAN_MARGIN >= u64::from(self.plan.rounds) {
                return Ok((injected, false));
            }
            let at = Instant::now();
            let member = rng.gen_range(self.members());
            let (kind, count) = match rng.gen_range(0..100) {
                0..25 => {
                    self.sites[member].kill();
                    std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
                    self.sites[member].start(&self.exe, None)?;
                    ("kill -9 node", 1)
                }
                25..35 => {
                    self.sites[0].kill();
                    std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
                    self.sites[0].start(&self.exe, None)?;
                    ("kill -9 coordinator", 1)
                }
                35..60 => {
                    // The quorum is the first t members connected: only they release.
                    let quorum_member = rng.gen_range(1..=usize::from(args.threshold));
                    let (step, member) = match rng.gen_range(0..5) {
                        0 => ("contribute", member),
                        1 => ("upload", member),
                        2 => ("release", quorum_member),
                        3 => ("send", quorum_member),
                        _ => ("combine", member),
                    };
                    self.arm(member, &format!("{step}:{}", round + 2), kinds)?
                }
                60..75 => {
                    let steps = ["open", "close", "request", "first-share", "results"];
                    let step = steps[rng.gen_range(0..steps.len())];
                    self.arm(0, &format!("{step}:{}", round + 2), kinds)?
                }
                75..90 => {
                    self.sites[member].signal("STOP");
                    std::thread::sleep(Duration::from_secs(args.deadline_secs + 1));
                    self.sites[member].signal("CONT");
                    ("node frozen past the deadline", 1)
                }
                _ => {
                    let mut other = rng.gen_range(self.members());
                    if other == member {
                        other = if member + 1 < self.sites.len() {
                            member + 1
                        } else {
                            1
                        };
                    }
                    let fault = format!(
                        "cut-off:{}:{}:{}",
                        round + 2,
                        args.deadline_secs + 3,
                        self.sites[other].name
                    );
                    self.sites[member].kill();
                    self.sites[member].start(&self.exe, Some(&fault))?;
                    kinds.get_mut("kill -9 node").expect("a kind").faults += 1;
                    ("two members cut off", 1)
                }
            };
            let recovered = self.recover(args, round + 2, kinds)?;
            // The run ended at its plan's end before this fault could be judged: not counted.
            if self.over {
                return Ok((injected, false));
            }
            kinds.get_mut(kind).expect("a kind").faults += count;
            injected = counted(kinds) - before;
            let report = kinds.get_mut(kind).expect("a kind");
            if !recovered {
                eprintln!(
                    "soak: no recovery within {} s after {kind} (round {round}); the logs are \
                     in {}",
                    args.recovery_timeout_secs,
                    self.dir.display()
                );
                return Ok((injected, true));
            }
            report.recoveries += count;
            report.recover_seconds.push(at.elapsed().as_secs_f64());
            // A fault armed at a step, or a cut-off, came with a kill -9 to restart the
            // process with it: that kill recovered too.
            let companion = match kind {
                "node abort at a step" | "two members cut off" | "armed step not reached" => {
                    Some("kill -9 node")
                }
                "coordinator abort at a step" => Some("kill -9 coordinator"),
                _ => None,
            };
            if let Some(kill) = companion {
                let report = kinds.get_mut(kill).expect("a kind");
                report.recoveries += 1;
                report.recover_seconds.push(at.elapsed().as_secs_f64());
            }
        }
        Ok((injected, false))
    }

    /// Restarts a process with `fault` armed and waits for it to fire (an abort), then
    /// restarts it plainly. Returns the kind and how many faults that was.
    fn arm(
        &mut self,
        site: usize,
        fault: &str,
        kinds: &mut BTreeMap<&'static str, KindReport>,
    ) -> Result<(&'static str, u32)> {
        let coordinator = site == 0;
        self.sites[site].kill();
        self.sites[site].start(&self.exe, Some(fault))?;
        kinds
            .get_mut(if coordinator {
                "kill -9 coordinator"
            } else {
                "kill -9 node"
            })
            .expect("a kind")
            .faults += 1;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if self.sites[site].child.is_none() || self.restart_exited(kinds)? > 0 {
                let kind = if coordinator {
                    "coordinator abort at a step"
                } else {
                    "node abort at a step"
                };
                return Ok((kind, 1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The step never came (a member outside the quorum, say): start it plainly.
        self.sites[site].kill();
        self.sites[site].start(&self.exe, None)?;
        Ok(("armed step not reached", 1))
    }

    /// Ends the run cleanly: the coordinator is stopped (SIGTERM) and restarted to finish
    /// three more rounds, after which every node leaves on its own.
    pub(super) fn end(&mut self, args: &SoakBenchArgs) -> Result<()> {
        self.sites[0].signal("TERM");
        let started = Instant::now();
        while self.sites[0].exited().is_none() {
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the coordinator in {} did not stop",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let last = self
            .log()?
            .iter()
            .filter_map(|e| match e.entry.body {
                protocol::audit::entry::Body::RoundOpen { round, .. } => Some(round),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        crate::local::edit_coordinator_config(&self.dir, |c| {
            c.insert("rounds".into(), toml::Value::Integer(last as i64 + 3));
        })?;
        self.sites[0].start(&self.exe, None)?;
        let started = Instant::now();
        let deadline = Duration::from_secs(args.recovery_timeout_secs + 60);
        while self.sites.iter().any(|s| s.child.is_some()) {
            for site in &mut self.sites {
                if let Some(status) = site.exited() {
                    ensure!(
                        status.success() || site.name == "coordinator",
                        "{} exited with {status} at the end of the run in {}",
                        site.name,
                        self.dir.display()
                    );
                }
            }
            ensure!(
                started.elapsed() < deadline,
                "the run in {} did not end",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn log(&self) -> Result<Vec<SignedEntry>> {
        let store = coordinator::store::LogStore::open(&self.dir.join("coordinator/log-store"))?;
        store
            .leaves()?
            .iter()
            .map(|leaf| SignedEntry::open(leaf).context("a stored leaf"))
            .collect()
    }

    /// Judges the ended run from its log: the models, the releases, the members' copies of
    /// the log, and the auditor's verdict.
    pub(super) fn judge(&self, totals: &mut Totals) -> Result<()> {
        let log = self.log()?;
        let (model, rounds) =
            node::reference::synthetic_reference(&self.plan, SYNTHETIC_SEED, &log)?;
        let expected = hex::encode(model_digest(&model));
        totals.rounds_decrypted += rounds.len() as u64;
        totals.rounds_opened += log
            .iter()
            .filter(|e| matches!(e.entry.body, protocol::audit::entry::Body::RoundOpen { .. }))
            .count() as u64;
        let place = self.dir.display();
        let leaves: Vec<&[u8]> = log.iter().map(|e| e.leaf()).collect();
        for i in self.members() {
            let site = &self.sites[i];
            let summary: node::daemon::NodeSummary = read_json(&site.dir.join("summary.json"))?;
            if summary.model_digest != expected {
                totals.losses.push(format!(
                    "{place}: {} holds model {}, the log's rounds give {expected}",
                    site.name, summary.model_digest
                ));
            }
            let held =
                node::state_store::StateStore::open(&site.dir.join("node-store"))?.leaves()?;
            if held.len() > leaves.len() || held.iter().zip(&leaves).any(|(a, b)| a != b) {
                totals.losses.push(format!(
                    "{place}: {} holds entries that are not the coordinator's",
                    site.name
                ));
            }
        }
        for (author, ciphertext) in node::reference::double_releases(&log) {
            totals.losses.push(format!(
                "{place}: {} released {} twice",
                hex::encode(&author[..8]),
                hex::encode(&ciphertext[..8])
            ));
        }
        let audit = self.dir.join("audit-final");
        let export = Command::new(&self.exe)
            .args(["audit", "export", "--store"])
            .arg(self.dir.join("coordinator/log-store"))
            .arg("--out")
            .arg(&audit)
            .output()?;
        let verify = Command::new(&self.exe)
            .args(["audit", "verify"])
            .arg(&audit)
            .arg("--transcript")
            .arg(self.dir.join("transcript"))
            .output()?;
        if !export.status.success() || !verify.status.success() {
            totals.losses.push(format!(
                "{place}: audit verify: {}{}",
                String::from_utf8_lossy(&export.stderr),
                String::from_utf8_lossy(&verify.stdout)
            ));
        }
        Ok(())
    }
}
