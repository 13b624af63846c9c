//! Dealing the data to institutions: the shipped data sets by `--split`, or one institution per
//! CSV file of `--data-dir`; each institution's rows shuffled with the seed and a held-out part
//! written beside its training rows.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use super::{DemoArgs, Split, categories};

/// One institution's share of the data, as files in the output directory.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Institution {
    pub(super) name: String,
    pub(super) member: String,
    #[serde(skip)]
    pub(super) train: PathBuf,
    #[serde(skip)]
    pub(super) test: PathBuf,
    pub(super) train_rows: usize,
    pub(super) test_rows: usize,
}

/// Header and data lines of a CSV text (empty lines dropped).
pub(super) fn lines(text: &str, file: &str) -> Result<(String, Vec<String>)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .with_context(|| format!("{file}: no header line"))?
        .to_owned();
    Ok((header, lines.map(str::to_owned).collect()))
}

pub(super) fn write_csv(path: &Path, header: &str, rows: &[&String]) -> Result<()> {
    let mut text = String::with_capacity(rows.len() * 128);
    text.push_str(header);
    text.push('\n');
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Holds out `test_fraction` of an institution's rows (after a seeded shuffle) and writes
/// both parts.
pub(super) fn write_institution(
    dir: &Path,
    name: &str,
    member: &str,
    header: &str,
    mut rows: Vec<&String>,
    test_fraction: f64,
    rng: &mut ChaCha20Rng,
) -> Result<Institution> {
    rows.shuffle(rng);
    let test_rows = ((rows.len() as f64 * test_fraction).round() as usize).max(1);
    ensure!(
        rows.len() > test_rows,
        "institution {name} has {} rows: too few to hold out {test_rows} for testing",
        rows.len()
    );
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let (test, train) = rows.split_at(test_rows);
    let institution = Institution {
        name: name.to_owned(),
        member: member.to_owned(),
        train: dir.join("train.csv"),
        test: dir.join("test.csv"),
        train_rows: train.len(),
        test_rows: test.len(),
    };
    write_csv(&institution.train, header, train)?;
    write_csv(&institution.test, header, test)?;
    Ok(institution)
}

/// Splits a shipped data set across `members` as `--split` says.
pub(super) fn split_shipped(
    args: &DemoArgs,
    members: &[String],
    dir: &Path,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<Institution>> {
    let (header, rows) = lines(args.dataset.text(), args.dataset.name())?;
    let target = header
        .split(',')
        .position(|c| c == args.dataset.target())
        .context("the shipped data has no target column")?;
    let n = members.len();
    let mut parts: Vec<Vec<&String>> = vec![Vec::new(); n];
    let mut order: Vec<&String> = rows.iter().collect();
    order.shuffle(rng);
    for (k, row) in order.into_iter().enumerate() {
        let institution = match args.split {
            Split::Iid => k % n,
            Split::Skewed => {
                let label: usize = row
                    .split(',')
                    .nth(target)
                    .and_then(|l| l.trim().parse().ok())
                    .context("the shipped data has a bad label")?;
                let home = label % n;
                if n == 1 || rng.gen_bool(0.8) {
                    home
                } else {
                    (home + rng.gen_range(1..n)) % n
                }
            }
        };
        parts[institution].push(row);
    }
    members
        .iter()
        .zip(parts)
        .map(|(member, rows)| {
            write_institution(dir, member, member, &header, rows, args.test_fraction, rng)
        })
        .collect()
}

/// One institution per CSV file of `--data-dir`, in file-name order.
pub(super) fn split_directory(
    data_dir: &Path,
    args: &DemoArgs,
    members: &[String],
    dir: &Path,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<Institution>> {
    let files = csv_files(data_dir)?;
    let mut institutions = Vec::new();
    let mut first_header: Option<(String, PathBuf)> = None;
    for (file, member) in files.iter().zip(members) {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let display = file.display().to_string();
        // Refuse a bad file here, with errors naming its own rows, not a split's.
        let impute = if args.impute_missing {
            training::data::Impute::Mean
        } else {
            training::data::Impute::Refuse
        };
        let target = args.target.as_deref().unwrap_or_default();
        training::data::parse_csv(&text, &display, target, 1 << 16, impute, &categories(args)?)?;
        let (header, rows) = lines(&text, &display)?;
        match &first_header {
            Some((first, path)) if *first != header => bail!(
                "{}: the header differs from {}'s",
                file.display(),
                path.display()
            ),
            Some(_) => {}
            None => first_header = Some((header.clone(), file.clone())),
        }
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| member.clone());
        if institutions
            .iter()
            .any(|i: &Institution| i.name.eq_ignore_ascii_case(&name))
        {
            bail!(
                "{}: another file in {} names the same institution",
                file.display(),
                data_dir.display()
            );
        }
        institutions.push(write_institution(
            dir,
            &name,
            member,
            &header,
            rows.iter().collect(),
            args.test_fraction,
            rng,
        )?);
    }
    Ok(institutions)
}

pub(super) fn csv_files(data_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .with_context(|| format!("reading the directory {}", data_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")))
        .collect();
    files.sort();
    ensure!(
        files.len() >= 2,
        "{}: {} CSV file(s); one per institution and at least two are needed",
        data_dir.display(),
        files.len()
    );
    ensure!(
        files.len() <= 26,
        "{}: {} CSV files; at most 26 institutions",
        data_dir.display(),
        files.len()
    );
    Ok(files)
}

/// The number of classes: one more than the largest label in any institution's file.
pub(super) fn count_classes(
    institutions: &[Institution],
    target: &str,
    impute: bool,
    categories: &training::data::Categories,
) -> Result<usize> {
    let impute = if impute {
        training::data::Impute::Mean
    } else {
        training::data::Impute::Refuse
    };
    let mut classes = 0;
    for institution in institutions {
        for path in [&institution.train, &institution.test] {
            let data = training::data::load_csv(path, target, 1 << 16, impute, categories)?;
            classes = classes.max(data.labels.iter().max().map_or(0, |&l| l as usize + 1));
        }
    }
    ensure!(classes >= 2, "the target {target:?} holds a single class");
    Ok(classes)
}
