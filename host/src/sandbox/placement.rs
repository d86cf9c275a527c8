//! Which Docker engine serves a tenant: weighted rendezvous hashing over the engines' names, or
//! the tenant's explicit `sandbox.engine`.
//!
//! Every engine gets a score for a tenant, `-weight / ln(u)` with `u` in (0, 1) drawn from a hash
//! of (tenant, engine name); the tenant's order is the engines by falling score, and it is placed
//! on the first. The rule needs no state and no coordination (every gateway computes the same
//! order from the same config), an engine's share of tenants is its weight over the sum of
//! weights, and adding an engine moves only the tenants that now score highest on it (about
//! `1/N` of them), removing one moves only its own. The order's tail is where a tenant goes when
//! the operator allows failover.

use ring::digest;

/// One engine as placement sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub weight: u32,
}

/// Indexes of `engines` in `tenant`'s order: its pinned engine first (if it names one of them),
/// then the rest by falling rendezvous score. Ties (which need equal 64-bit hashes) fall back to
/// the name, so the order is total.
pub fn order(tenant: &str, pinned: Option<&str>, engines: &[Candidate<'_>]) -> Vec<usize> {
    let mut scored: Vec<(usize, f64)> =
        engines.iter().enumerate().map(|(i, e)| (i, score(tenant, e.name, e.weight))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| engines[a.0].name.cmp(engines[b.0].name)));
    let mut out: Vec<usize> = scored.into_iter().map(|(i, _)| i).collect();
    if let Some(p) = pinned
        && let Some(pos) = out.iter().position(|&i| engines[i].name == p)
    {
        let i = out.remove(pos);
        out.insert(0, i);
    }
    out
}

/// The weighted rendezvous score of `engine` for `tenant`.
fn score(tenant: &str, engine: &str, weight: u32) -> f64 {
    let d = digest::digest(&digest::SHA256, format!("bulkhead/placement/v1\0{tenant}\0{engine}").as_bytes());
    let mut x = [0u8; 8];
    x.copy_from_slice(&d.as_ref()[..8]);
    // u in (0, 1): never 0 (ln would be -inf) nor 1 (ln would be 0).
    let u = ((u64::from_be_bytes(x) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight.max(1)) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engines(spec: &[(&'static str, u32)]) -> Vec<Candidate<'static>> {
        spec.iter().map(|&(name, weight)| Candidate { name, weight }).collect()
    }

    fn placed(tenants: &[String], es: &[Candidate<'_>]) -> Vec<&'static str> {
        tenants.iter().map(|t| leak(es[order(t, None, es)[0]].name)).collect()
    }

    fn leak(s: &str) -> &'static str {
        Box::leak(s.to_string().into_boxed_str())
    }

    fn tenants(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tenant-{i}")).collect()
    }

    #[test]
    fn the_order_is_stable_total_and_independent_of_listing_order() {
        let a = engines(&[("a", 100), ("b", 100), ("c", 100)]);
        let b = engines(&[("c", 100), ("a", 100), ("b", 100)]);
        for t in tenants(200) {
            let oa: Vec<_> = order(&t, None, &a).into_iter().map(|i| a[i].name).collect();
            let ob: Vec<_> = order(&t, None, &b).into_iter().map(|i| b[i].name).collect();
            assert_eq!(oa, ob, "{t}");
            let mut sorted = oa.clone();
            sorted.sort();
            assert_eq!(sorted, ["a", "b", "c"], "every engine once");
            assert_eq!(oa, order(&t, None, &a).into_iter().map(|i| a[i].name).collect::<Vec<_>>());
        }
    }

    #[test]
    fn adding_an_engine_moves_about_one_in_n_tenants_and_only_to_it() {
        let ts = tenants(20_000);
        let four = engines(&[("e1", 100), ("e2", 100), ("e3", 100), ("e4", 100)]);
        let five = engines(&[("e1", 100), ("e2", 100), ("e3", 100), ("e4", 100), ("e5", 100)]);
        let (before, after) = (placed(&ts, &four), placed(&ts, &five));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                moved += 1;
                assert_eq!(*a, "e5", "a tenant moved between two old engines");
            }
        }
        let share = moved as f64 / ts.len() as f64;
        assert!((share - 0.2).abs() < 0.02, "moved {share:.3} of tenants, expected about 1/5");
        // Removing it moves back exactly those.
        assert_eq!(placed(&ts, &four), before);
    }

    #[test]
    fn shares_follow_the_weights() {
        let ts = tenants(30_000);
        let es = engines(&[("small", 100), ("big", 300), ("mid", 200)]);
        let p = placed(&ts, &es);
        for (name, w) in [("small", 100.0), ("big", 300.0), ("mid", 200.0)] {
            let share = p.iter().filter(|n| **n == name).count() as f64 / ts.len() as f64;
            let want = w / 600.0;
            assert!((share - want).abs() < 0.02, "{name}: share {share:.3}, expected {want:.3}");
        }
        // Raising one weight only moves tenants onto that engine.
        let raised = engines(&[("small", 100), ("big", 300), ("mid", 400)]);
        for (b, a) in p.iter().zip(placed(&ts, &raised)) {
            assert!(*b == a || a == "mid", "{b} -> {a}");
        }
    }

    #[test]
    fn a_pin_goes_first_and_the_rest_keep_their_order() {
        let es = engines(&[("a", 100), ("b", 100), ("c", 100)]);
        for t in tenants(50) {
            let free = order(&t, None, &es);
            let pinned = order(&t, Some("c"), &es);
            assert_eq!(es[pinned[0]].name, "c");
            let rest: Vec<_> = free.iter().copied().filter(|&i| es[i].name != "c").collect();
            assert_eq!(&pinned[1..], &rest[..]);
            // A pin naming no engine changes nothing (config validation refuses it anyway).
            assert_eq!(order(&t, Some("zzz"), &es), free);
        }
    }
}
