//! Checks on the colour sequences the subscribers report.

use serde_json::Value;

/// The colours decoded from one stream (or from all, with `None`), with
/// repeats and "unknown" (blends at a switch) removed.
pub fn colour_changes(events: &[Value], stream_id: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events.iter().filter(|e| e["event"] == "frame") {
        if let Some(sid) = stream_id {
            if e["stream_id"] != sid {
                continue;
            }
        }
        let Some(c) = e["colour"].as_str() else {
            continue;
        };
        if c == "unknown" || out.last().is_some_and(|l| l == c) {
            continue;
        }
        out.push(c.to_string());
    }
    out
}

/// Passes when `observed` steps through `cycle` in order (wrapping round),
/// with at least `min_steps` steps, and never shows a colour out of turn.
pub fn assert_colour_sequence(
    observed: &[String],
    cycle: &[&str],
    min_steps: usize,
) -> Result<(), String> {
    let pos = |c: &str| cycle.iter().position(|x| *x == c);
    for c in observed {
        if pos(c).is_none() {
            return Err(format!(
                "colour {c:?} is not in {cycle:?}; seen {observed:?}"
            ));
        }
    }
    for pair in observed.windows(2) {
        let (a, b) = (pos(&pair[0]).unwrap_or(0), pos(&pair[1]).unwrap_or(0));
        if (a + 1) % cycle.len() != b {
            return Err(format!(
                "{:?} followed {:?}, expected {:?}; seen {observed:?}",
                pair[1],
                pair[0],
                cycle[(a + 1) % cycle.len()]
            ));
        }
    }
    let steps = observed.len().saturating_sub(1);
    if steps < min_steps {
        return Err(format!(
            "only {steps} colour changes (want {min_steps}); seen {observed:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn changes_are_deduplicated_per_stream() {
        let evs = vec![
            json!({"event": "frame", "stream_id": "a", "colour": "red"}),
            json!({"event": "frame", "stream_id": "b", "colour": "blue"}),
            json!({"event": "frame", "stream_id": "a", "colour": "unknown"}),
            json!({"event": "frame", "stream_id": "a", "colour": "red"}),
            json!({"event": "frame", "stream_id": "a", "colour": "green"}),
        ];
        assert_eq!(colour_changes(&evs, Some("a")), s(&["red", "green"]));
        assert_eq!(
            colour_changes(&evs, None),
            s(&["red", "blue", "red", "green"])
        );
    }

    #[test]
    fn sequence_must_follow_the_cycle() {
        let cycle = ["red", "green", "blue"];
        assert!(assert_colour_sequence(&s(&["blue", "red", "green", "blue"]), &cycle, 3).is_ok());
        assert!(assert_colour_sequence(&s(&["red", "blue"]), &cycle, 1).is_err());
        assert!(assert_colour_sequence(&s(&["red", "green"]), &cycle, 2).is_err());
        assert!(assert_colour_sequence(&s(&["red", "pink"]), &cycle, 1).is_err());
    }
}
