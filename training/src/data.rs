//! Tabular training data from CSV files: a header, a named target column, numeric features and
//! categorical ones one-hot encoded from declared category lists.
//! Real files have missing cells and stray text; each problem is an error naming the file, the
//! row (1-based, counting the header as row 1) and the column, unless the caller chose to
//! impute missing values.
//!
//! Feature scaling uses only this institution's own statistics, so nothing about one
//! institution's data reaches another through the scaler.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: the file has no header line")]
    NoHeader { path: String },
    #[error("{path}: no column named {target:?} (columns: {columns})")]
    NoTarget {
        path: String,
        target: String,
        columns: String,
    },
    #[error("{path}, row {row}: {found} fields, the header has {expected}")]
    Ragged {
        path: String,
        row: usize,
        found: usize,
        expected: usize,
    },
    #[error(
        "{path}, row {row}, column {column:?}: {value:?} is not a number (declare the \
         column's categories to one-hot encode it)"
    )]
    NotNumeric {
        path: String,
        row: usize,
        column: String,
        value: String,
    },
    #[error(
        "{path}, row {row}, column {column:?}: missing value (pass an imputation option to fill it)"
    )]
    Missing {
        path: String,
        row: usize,
        column: String,
    },
    #[error("{path}, row {row}: the label {value:?} is not a class index 0..{classes}")]
    Label {
        path: String,
        row: usize,
        value: String,
        classes: usize,
    },
    #[error("{path}, row {row}: unterminated quoted field")]
    Quote { path: String, row: usize },
    #[error("{path}: no data rows")]
    Empty { path: String },
    #[error("{path}, row {row}, column {column:?}: {value:?} is not one of the categories {known}")]
    UnknownCategory {
        path: String,
        row: usize,
        column: String,
        value: String,
        known: String,
    },
    #[error("the categories of column {column:?}: {reason}")]
    BadCategories { column: String, reason: String },
    #[error("{path}: no column named {column:?} for its categories (columns: {columns})")]
    NoCategoricalColumn {
        path: String,
        column: String,
        columns: String,
    },
}

/// What to do with an empty cell in a feature column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impute {
    /// An empty cell is an error naming its row and column.
    Refuse,
    /// Fill with the column's mean over this file's present values.
    Mean,
}

impl Impute {
    /// As a configuration's `impute_missing` says.
    pub fn when(impute_missing: bool) -> Self {
        if impute_missing {
            Self::Mean
        } else {
            Self::Refuse
        }
    }
}

/// Features (row-major) and integer class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub columns: Vec<String>,
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Dataset {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    pub fn width(&self) -> usize {
        self.columns.len()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.width()..(i + 1) * self.width()]
    }

    /// Standardises every feature with this dataset's own mean and standard deviation (a
    /// constant column becomes zeros), and returns them for applying to held-out rows.
    pub fn standardise(&mut self) -> Vec<(f32, f32)> {
        let (n, w) = (self.rows() as f64, self.width());
        let stats: Vec<(f32, f32)> = (0..w)
            .map(|c| {
                let mean = (0..self.rows())
                    .map(|r| f64::from(self.row(r)[c]))
                    .sum::<f64>()
                    / n;
                let var = (0..self.rows())
                    .map(|r| (f64::from(self.row(r)[c]) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                // A constant column (say, a category absent here) is only centred.
                let sd = var.sqrt() as f32;
                (mean as f32, if sd > 1e-6 { sd } else { 1.0 })
            })
            .collect();
        self.apply(&stats);
        stats
    }

    /// sign(x) ln(1 + |x|) on every feature: the same function at every institution, so it
    /// learns nothing from any one data set and keeps features comparable across them.
    pub fn log_transform(&mut self) {
        for v in &mut self.features {
            *v = v.signum() * v.abs().ln_1p();
        }
    }

    pub fn apply(&mut self, stats: &[(f32, f32)]) {
        let w = self.width();
        for (i, v) in self.features.iter_mut().enumerate() {
            let (mean, sd) = stats[i % w];
            *v = (*v - mean) / sd;
        }
    }
}

/// Splits one CSV line into fields (RFC 4180 quoting: "a,b" and "" for a quote).
fn fields(line: &str, path: &str, row: usize) -> Result<Vec<String>, DataError> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => out.push(std::mem::take(&mut field)),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(DataError::Quote {
            path: path.to_owned(),
            row,
        });
    }
    out.push(field);
    Ok(out)
}

/// Categorical columns and the categories every member agreed for each, in order: such a
/// column becomes one 0/1 feature per category (`column=category`), the same at every
/// institution whatever values its own file happens to hold.
pub type Categories = std::collections::BTreeMap<String, Vec<String>>;

/// Parses CSV text whose `target` column holds class indexes 0..classes.
pub fn parse_csv(
    text: &str,
    path: &str,
    target: &str,
    classes: usize,
    impute: Impute,
    categories: &Categories,
) -> Result<Dataset, DataError> {
    parse_rows(text, path, target, Some(classes), impute, categories)
}

/// Parses CSV text for its features alone: the `target` column is left out unread (an
/// external trainer's target may be anything), and every label is 0.
pub fn parse_features(
    text: &str,
    path: &str,
    target: &str,
    impute: Impute,
    categories: &Categories,
) -> Result<Dataset, DataError> {
    parse_rows(text, path, target, None, impute, categories)
}

/// `classes`: the target's class count, or `None` to leave the target unread.
fn parse_rows(
    text: &str,
    path: &str,
    target: &str,
    classes: Option<usize>,
    impute: Impute,
    categories: &Categories,
) -> Result<Dataset, DataError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| DataError::NoHeader {
        path: path.to_owned(),
    })?;
    let header: Vec<String> = fields(header.trim_end_matches('\r'), path, 1)?
        .into_iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let target_at = header
        .iter()
        .position(|h| h == target)
        .ok_or_else(|| DataError::NoTarget {
            path: path.to_owned(),
            target: target.to_owned(),
            columns: header.join(", "),
        })?;
    if let Some(column) = categories.keys().find(|c| !header.contains(c)) {
        return Err(DataError::NoCategoricalColumn {
            path: path.to_owned(),
            column: column.clone(),
            columns: header.join(", "),
        });
    }
    for (column, known) in categories {
        let repeated = known
            .iter()
            .enumerate()
            .find(|(i, c)| known[..*i].contains(c));
        if column == target || known.is_empty() || repeated.is_some() {
            return Err(DataError::BadCategories {
                column: column.clone(),
                reason: if column == target {
                    "it is the target".into()
                } else if let Some((_, c)) = repeated {
                    format!("{c:?} is listed twice")
                } else {
                    "no categories listed".into()
                },
            });
        }
    }
    let columns: Vec<String> = header
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != target_at)
        .flat_map(|(_, h)| match categories.get(h) {
            Some(known) => known.iter().map(|c| format!("{h}={c}")).collect(),
            None => vec![h.clone()],
        })
        .collect();
    let mut cells: Vec<Option<f32>> = Vec::new();
    let mut labels = Vec::new();
    for (index, line) in lines {
        let row = index + 1;
        let values = fields(line.trim_end_matches('\r'), path, row)?;
        if values.len() != header.len() {
            return Err(DataError::Ragged {
                path: path.to_owned(),
                row,
                found: values.len(),
                expected: header.len(),
            });
        }
        for (i, value) in values.iter().enumerate() {
            let value = value.trim();
            if i == target_at {
                let Some(classes) = classes else {
                    labels.push(0);
                    continue;
                };
                let label: u32 = value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.fract() == 0.0 && *v >= 0.0 && (*v as usize) < classes)
                    .map(|v| v as u32)
                    .ok_or_else(|| DataError::Label {
                        path: path.to_owned(),
                        row,
                        value: value.to_owned(),
                        classes,
                    })?;
                labels.push(label);
                continue;
            }
            let known = categories.get(&header[i]);
            let width = known.map_or(1, Vec::len);
            // A declared category wins over the missing-value spellings ("NA" may be one).
            if let Some(at) = known.and_then(|k| k.iter().position(|c| c == value)) {
                cells.extend((0..width).map(|k| Some(if k == at { 1.0 } else { 0.0 })));
                continue;
            }
            if value.is_empty() || value.eq_ignore_ascii_case("na") || value == "?" {
                if impute == Impute::Refuse {
                    return Err(DataError::Missing {
                        path: path.to_owned(),
                        row,
                        column: header[i].clone(),
                    });
                }
                cells.extend(std::iter::repeat_n(None, width));
                continue;
            }
            if let Some(known) = known {
                return Err(DataError::UnknownCategory {
                    path: path.to_owned(),
                    row,
                    column: header[i].clone(),
                    value: value.to_owned(),
                    known: known.join(", "),
                });
            }
            let number = value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| DataError::NotNumeric {
                    path: path.to_owned(),
                    row,
                    column: header[i].clone(),
                    value: value.to_owned(),
                })?;
            cells.push(Some(number));
        }
    }
    if labels.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    let w = columns.len();
    let means: Vec<f32> = (0..w)
        .map(|c| {
            let present: Vec<f32> = cells.iter().skip(c).step_by(w).flatten().copied().collect();
            if present.is_empty() {
                0.0
            } else {
                present.iter().sum::<f32>() / present.len() as f32
            }
        })
        .collect();
    let features = cells
        .iter()
        .enumerate()
        .map(|(i, v)| v.unwrap_or(means[i % w]))
        .collect();
    Ok(Dataset {
        columns,
        features,
        labels,
    })
}

/// A file's text and its name for messages.
fn read(path: &Path) -> Result<(String, String), DataError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Read {
        path: display.clone(),
        reason: e.to_string(),
    })?;
    Ok((text, display))
}

pub fn load_csv(
    path: &Path,
    target: &str,
    classes: usize,
    impute: Impute,
    categories: &Categories,
) -> Result<Dataset, DataError> {
    let (text, display) = read(path)?;
    parse_csv(&text, &display, target, classes, impute, categories)
}

/// The features of a CSV file, its `target` column left out unread (see [`parse_features`]).
pub fn load_features(
    path: &Path,
    target: &str,
    impute: Impute,
    categories: &Categories,
) -> Result<Dataset, DataError> {
    let (text, display) = read(path)?;
    parse_features(&text, &display, target, impute, categories)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, impute: Impute) -> Result<Dataset, DataError> {
        parse_csv(text, "t.csv", "y", 3, impute, &Categories::new())
    }

    #[test]
    fn features_alone_leave_any_target_unread_and_the_rest_checked() {
        // An external trainer's target may be text or a real number.
        let d = parse_features(
            "a,y,b\n1,cat,2\n3,0.5,4\n",
            "t.csv",
            "y",
            Impute::Refuse,
            &Categories::new(),
        )
        .unwrap();
        assert_eq!(d.columns, ["a", "b"]);
        assert_eq!(d.features, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.rows(), 2);
        let error = parse_features(
            "a,y\nx,1\n",
            "t.csv",
            "y",
            Impute::Refuse,
            &Categories::new(),
        )
        .unwrap_err();
        assert!(
            matches!(error, DataError::NotNumeric { row: 2, .. }),
            "{error:?}"
        );
        let error = parse_features(
            "a,b\n1,2\n",
            "t.csv",
            "y",
            Impute::Refuse,
            &Categories::new(),
        )
        .unwrap_err();
        assert!(matches!(error, DataError::NoTarget { .. }), "{error:?}");
    }

    #[test]
    fn categorical_columns_are_one_hot_encoded_with_the_agreed_categories() {
        let categories = Categories::from([(
            "site".to_string(),
            vec!["north".to_string(), "south".to_string(), "east".to_string()],
        )]);
        let parse = |text: &str, impute| parse_csv(text, "t.csv", "y", 2, impute, &categories);
        let d = parse("a,site,y\n1,south,0\n2,north,1\n", Impute::Refuse).unwrap();
        assert_eq!(d.columns, ["a", "site=north", "site=south", "site=east"]);
        assert_eq!(d.features, [1.0, 0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 0.0]);
        // A missing category is imputed with the file's frequencies on request.
        let d = parse("a,site,y\n1,south,0\n2,,1\n", Impute::Mean).unwrap();
        assert_eq!(&d.features[4..], [2.0, 0.0, 1.0, 0.0]);
        assert_eq!(
            parse("a,site,y\n1,west,0\n", Impute::Refuse).unwrap_err(),
            DataError::UnknownCategory {
                path: "t.csv".into(),
                row: 2,
                column: "site".into(),
                value: "west".into(),
                known: "north, south, east".into()
            }
        );
        assert!(matches!(
            parse("a,y\n1,0\n", Impute::Refuse).unwrap_err(),
            DataError::NoCategoricalColumn { column, .. } if column == "site"
        ));
        let twice =
            Categories::from([("site".to_string(), vec!["n".to_string(), "n".to_string()])]);
        assert!(matches!(
            parse_csv("site,y\nn,0\n", "t.csv", "y", 2, Impute::Refuse, &twice).unwrap_err(),
            DataError::BadCategories { reason, .. } if reason.contains("twice")
        ));
        // "NA" can be a category rather than a missing value when declared as one.
        let regions =
            Categories::from([("r".to_string(), vec!["EU".to_string(), "NA".to_string()])]);
        let d = parse_csv(
            "r,y\nNA,0\nEU,1\n",
            "t.csv",
            "y",
            2,
            Impute::Refuse,
            &regions,
        )
        .unwrap();
        assert_eq!(d.features, [0.0, 1.0, 1.0, 0.0]);
        // A category absent from the file is centred, not blown up by a zero spread.
        let mut d = parse_csv(
            "r,y\nEU,0\nEU,1\n",
            "t.csv",
            "y",
            2,
            Impute::Refuse,
            &regions,
        )
        .unwrap();
        let stats = d.standardise();
        assert_eq!(stats[1], (0.0, 1.0));
        assert!(d.features.iter().all(|v| v.abs() <= 1.0));
        let target = Categories::from([("y".to_string(), vec!["0".to_string()])]);
        assert!(matches!(
            parse_csv("a,y\n1,0\n", "t.csv", "y", 2, Impute::Refuse, &target).unwrap_err(),
            DataError::BadCategories { reason, .. } if reason.contains("target")
        ));
    }

    #[test]
    fn a_clean_file_parses_with_the_target_anywhere() {
        let d = parse("a,y,b\n1,0,2\n\"3\",2,4.5\n", Impute::Refuse).unwrap();
        assert_eq!(d.columns, vec!["a", "b"]);
        assert_eq!(d.features, vec![1.0, 2.0, 3.0, 4.5]);
        assert_eq!(d.labels, vec![0, 2]);
    }

    #[test]
    fn bad_files_give_errors_naming_row_and_column() {
        assert_eq!(
            parse("a,b\n1,2\n", Impute::Refuse).unwrap_err(),
            DataError::NoTarget {
                path: "t.csv".into(),
                target: "y".into(),
                columns: "a, b".into()
            }
        );
        assert!(matches!(
            parse("a,y\n1,0\n1,2,3\n", Impute::Refuse),
            Err(DataError::Ragged {
                row: 3,
                found: 3,
                expected: 2,
                ..
            })
        ));
        let err = parse("a,y\n1,0\nred,1\n", Impute::Refuse).unwrap_err();
        assert!(matches!(&err, DataError::NotNumeric { row: 3, column, .. } if column == "a"));
        assert!(
            err.to_string().contains("t.csv, row 3, column \"a\""),
            "{err}"
        );
        assert!(matches!(
            parse("a,y\n,0\n", Impute::Refuse),
            Err(DataError::Missing { row: 2, .. })
        ));
        assert!(matches!(
            parse("a,y\n1,7\n", Impute::Refuse),
            Err(DataError::Label { row: 2, .. })
        ));
        assert!(matches!(
            parse("a,y\n\"1,0\n", Impute::Refuse),
            Err(DataError::Quote { .. })
        ));
        assert!(matches!(
            parse("a,y\n", Impute::Refuse),
            Err(DataError::Empty { .. })
        ));
        assert!(matches!(
            parse("", Impute::Refuse),
            Err(DataError::NoHeader { .. })
        ));
    }

    #[test]
    fn missing_values_are_imputed_with_the_local_mean_on_request() {
        let d = parse("a,b,y\n1,,0\n3,5,1\nNA,7,1\n", Impute::Mean).unwrap();
        assert_eq!(d.features, vec![1.0, 6.0, 3.0, 5.0, 2.0, 7.0]);
    }

    #[test]
    fn standardising_uses_local_statistics_only() {
        let mut d = parse("a,b,y\n1,5,0\n3,5,1\n", Impute::Refuse).unwrap();
        let stats = d.standardise();
        assert_eq!(stats[0], (2.0, 1.0));
        assert_eq!(d.features, vec![-1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn the_shipped_data_sets_load() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/data");
        let none = Categories::new();
        let wdbc = load_csv(&data.join("wdbc.csv"), "benign", 2, Impute::Refuse, &none).unwrap();
        assert_eq!((wdbc.rows(), wdbc.width()), (569, 30));
        let digits =
            load_csv(&data.join("digits.csv"), "label", 10, Impute::Refuse, &none).unwrap();
        assert_eq!((digits.rows(), digits.width()), (1797, 64));
    }
}
