//! The node's license: what `GetLicense` and `ListClusterNodes` report, and
//! the limits the node enforces (connections per node, nodes per cluster).
//!
//! A license file is JSON:
//!
//! ```json
//! {"type": "Standard", "serial_code": "ABC-123", "max_connections": 500,
//!  "max_nodes": 3, "expired_at": "2026-03-31"}
//! ```
//!
//! `max_nodes` defaults to 1, `expired_at` to never; other fields are ignored.
//! `expired_at` is a date (valid through that day, UTC) or an RFC 3339 time
//! (`2026-03-31T12:00:00Z`, `2026-03-31T21:00:00+09:00`). Without a
//! `license_file` the node runs on [`License::development`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    #[serde(rename = "type")]
    pub license_type: String,
    pub serial_code: String,
    pub max_connections: u64,
    #[serde(default = "one")]
    pub max_nodes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
}

fn one() -> u64 {
    1
}

/// Why a license was refused.
#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
    #[error("license file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("license file {}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("license{}: {field}: {reason}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Invalid {
        path: Option<PathBuf>,
        field: &'static str,
        reason: String,
    },
    #[error("license {serial_code} expired at {expired_at}; install a valid license file (license_file in sora.conf)")]
    Expired {
        serial_code: String,
        expired_at: String,
    },
}

impl License {
    /// The license a node runs on without a `license_file`: enough for
    /// development and for the three-node cluster tutorial.
    pub fn development() -> License {
        License {
            license_type: "Experimental".into(),
            serial_code: "DEVELOPMENT".into(),
            max_connections: 100,
            max_nodes: 3,
            expired_at: None,
        }
    }

    /// Reads, parses and validates a license file (expiry is checked
    /// separately, see [`License::check_expiry`]).
    pub fn load(path: &Path) -> Result<License, LicenseError> {
        let text = std::fs::read_to_string(path).map_err(|source| LicenseError::Io {
            path: path.to_owned(),
            source,
        })?;
        let license: License =
            serde_json::from_str(&text).map_err(|source| LicenseError::Json {
                path: path.to_owned(),
                source,
            })?;
        license.validate().map_err(|e| match e {
            LicenseError::Invalid {
                path: None,
                field,
                reason,
            } => LicenseError::Invalid {
                path: Some(path.to_owned()),
                field,
                reason,
            },
            other => other,
        })?;
        Ok(license)
    }

    /// The license a node starts with: `license_file`'s, or the development
    /// license without one. Refuses an expired license.
    pub fn for_node(license_file: Option<&Path>, now: SystemTime) -> Result<License, LicenseError> {
        let license = match license_file {
            Some(path) => License::load(path)?,
            None => License::development(),
        };
        license.check_expiry(now)?;
        Ok(license)
    }

    /// Checks the fields' values.
    pub fn validate(&self) -> Result<(), LicenseError> {
        let invalid = |field, reason: &str| LicenseError::Invalid {
            path: None,
            field,
            reason: reason.to_owned(),
        };
        if self.license_type.trim().is_empty() {
            return Err(invalid("type", "must not be empty"));
        }
        if self.serial_code.trim().is_empty() {
            return Err(invalid("serial_code", "must not be empty"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.max_nodes == 0 {
            return Err(invalid("max_nodes", "must be at least 1"));
        }
        if let Some(at) = &self.expired_at {
            if parse_expiry(at).is_none() {
                return Err(invalid(
                    "expired_at",
                    &format!("{at:?} is not YYYY-MM-DD or an RFC 3339 time"),
                ));
            }
        }
        Ok(())
    }

    /// The moment the license stops being valid, `None` for never (or an
    /// `expired_at` that [`License::validate`] would refuse).
    pub fn expires(&self) -> Option<SystemTime> {
        self.expired_at.as_deref().and_then(parse_expiry)
    }

    /// `Err(Expired)` when `now` is at or past the expiry.
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), LicenseError> {
        match (self.expires(), &self.expired_at) {
            (Some(end), Some(at)) if now >= end => Err(LicenseError::Expired {
                serial_code: self.serial_code.clone(),
                expired_at: at.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// `YYYY-MM-DD` (the end of that day, UTC) or `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn parse_expiry(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let date = s.get(..10)?;
    let days = parse_date(date)?;
    let rest = &s[10..];
    let secs: i64 = if rest.is_empty() {
        (days + 1) * 86_400
    } else {
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        let hms = rest.get(..8)?;
        let b = hms.as_bytes();
        if b[2] != b':' || b[5] != b':' {
            return None;
        }
        let h = num(&hms[0..2])?;
        let m = num(&hms[3..5])?;
        let sec = num(&hms[6..8])?;
        if h > 23 || m > 59 || sec > 60 {
            return None;
        }
        let mut zone = &rest[8..];
        if let Some(frac) = zone.strip_prefix('.') {
            let digits = frac
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(frac.len());
            if digits == 0 {
                return None;
            }
            zone = &frac[digits..];
        }
        let offset = match zone {
            "Z" | "z" => 0,
            _ => {
                let sign = match zone.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let z = zone.get(1..)?;
                if z.len() != 5 || z.as_bytes()[2] != b':' {
                    return None;
                }
                let (oh, om) = (num(&z[0..2])?, num(&z[3..5])?);
                if oh > 23 || om > 59 {
                    return None;
                }
                sign * (oh * 3600 + om * 60)
            }
        };
        days * 86_400 + h * 3600 + m * 60 + sec - offset
    };
    if secs < 0 {
        return Some(UNIX_EPOCH);
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    // Days from civil (proleptic Gregorian), counting years from March.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// A fixed-width run of ASCII digits.
fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn development_license() {
        let l = License::development();
        assert_eq!(l.license_type, "Experimental");
        assert_eq!(l.serial_code, "DEVELOPMENT");
        assert_eq!((l.max_connections, l.max_nodes), (100, 3));
        l.validate().unwrap();
        l.check_expiry(SystemTime::now()).unwrap();
        assert_eq!(License::for_node(None, SystemTime::now()).unwrap(), l);
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "Experimental", "serial_code": "DEVELOPMENT",
                               "max_connections": 100, "max_nodes": 3})
        );
    }

    #[test]
    fn parses_a_file() {
        let l: License = serde_json::from_str(
            r#"{"type": "Standard", "serial_code": "S-1", "max_connections": 500,
                "max_nodes": 5, "expired_at": "2030-01-31", "signature": "ignored"}"#,
        )
        .unwrap();
        l.validate().unwrap();
        assert_eq!(l.license_type, "Standard");
        assert_eq!(l.max_nodes, 5);
        let l: License =
            serde_json::from_str(r#"{"type": "T", "serial_code": "S", "max_connections": 1}"#)
                .unwrap();
        assert_eq!((l.max_nodes, l.expired_at), (1, None));
    }

    #[test]
    fn expiry() {
        // 2030-01-31 is day 21945 since the epoch; valid through that day.
        let mut l = License::development();
        l.expired_at = Some("2030-01-31".into());
        let end = 21_946 * 86_400;
        assert_eq!(l.expires(), Some(at(end)));
        l.check_expiry(at(end - 1)).unwrap();
        let e = l.check_expiry(at(end)).unwrap_err().to_string();
        assert_eq!(
            e,
            "license DEVELOPMENT expired at 2030-01-31; install a valid license file (license_file in sora.conf)"
        );
        for (text, secs) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-03-01T00:00:00Z", 951_868_800),
            ("2024-02-29T12:34:56Z", 1_709_210_096),
            ("2024-02-29T21:34:56+09:00", 1_709_210_096),
            ("2024-02-29T12:34:56.789Z", 1_709_210_096),
            ("2024-02-29t03:34:56-09:00", 1_709_210_096),
        ] {
            l.expired_at = Some(text.into());
            assert_eq!(l.expires(), Some(at(secs)), "{text}");
        }
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-1-1",
            "tomorrow",
            "2024-01-01T25:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+0900",
            "2024-01-01T00:00:00.Z",
            "２０２４-01-01",
            "",
        ] {
            l.expired_at = Some(bad.into());
            assert_eq!(l.expires(), None, "{bad}");
            let e = l.validate().unwrap_err().to_string();
            assert!(e.starts_with("license: expired_at: "), "{e}");
        }
    }

    #[test]
    fn file_errors_are_clear() {
        let dir = std::env::temp_dir().join(format!("sora-license-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("license.json");
        let shown = path.display().to_string();

        let missing = License::load(&dir.join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("license file ") && missing.contains("nope.json"),
            "{missing}"
        );

        std::fs::write(&path, r#"{"type": "T", "max_connections": 1}"#).unwrap();
        let e = License::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "license file {shown}: missing field `serial_code`"
            )),
            "{e}"
        );

        std::fs::write(
            &path,
            r#"{"type": "T", "serial_code": "S", "max_connections": "many"}"#,
        )
        .unwrap();
        let e = License::load(&path).unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");

        std::fs::write(
            &path,
            r#"{"type": "T", "serial_code": "S", "max_connections": 0}"#,
        )
        .unwrap();
        let e = License::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("license file {shown}: max_connections: must be at least 1")
        );

        std::fs::write(
            &path,
            r#"{"type": "T", "serial_code": "OLD", "max_connections": 5, "expired_at": "2001-01-01"}"#,
        )
        .unwrap();
        assert!(License::load(&path).is_ok());
        let e = License::for_node(Some(&path), SystemTime::now()).unwrap_err();
        assert!(matches!(e, LicenseError::Expired { .. }), "{e}");

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
