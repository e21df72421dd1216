//! Drawing the next token from a row of logits: greedy, or softmax(logits / T) restricted to the
//! top-k tokens and then to the top-p nucleus, renormalized (the order transformers applies them).
//!
//! top-k keeps every token whose logit is at least the k-th largest (ties at the boundary stay).
//! top-p keeps, in decreasing probability, each token while the mass before it is below p (so the
//! token that crosses p stays, and the most likely token always does).

use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// 0 means greedy (argmax, lowest id on ties).
    pub temperature: f64,
    /// 0 means no top-k restriction.
    pub top_k: usize,
    /// 1 means no nucleus restriction.
    pub top_p: f64,
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler { temperature: 1.0, top_k: 0, top_p: 1.0 }
    }
}

impl Sampler {
    pub fn greedy() -> Sampler {
        Sampler { temperature: 0.0, ..Sampler::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// A sentence for settings that cannot sample.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!("temperature must be ≥ 0 (0 is greedy), got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }

    /// The tokens that can be drawn and their probabilities (summing to 1), most likely first.
    pub fn candidates(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        if self.is_greedy() || logits.len() <= 1 {
            return vec![(argmax(logits), 1.0)];
        }
        let t = self.temperature;
        let mut c: Vec<(u32, f64)> =
            logits.iter().enumerate().map(|(i, &x)| (i as u32, x as f64 / t)).collect();
        let by_logit_desc = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.top_k > 0 && self.top_k < c.len() {
            let (_, kth, _) = c.select_nth_unstable_by(self.top_k - 1, by_logit_desc);
            let kth = kth.1;
            c.retain(|&(_, z)| z >= kth);
        }
        c.sort_unstable_by(by_logit_desc);
        let m = c[0].1;
        let mut total = 0.0;
        for x in c.iter_mut() {
            x.1 = (x.1 - m).exp();
            total += x.1;
        }
        c.iter_mut().for_each(|x| x.1 /= total);
        if self.top_p < 1.0 {
            let mut before = 0.0;
            let keep = c
                .iter()
                .take_while(|x| {
                    let k = before < self.top_p;
                    before += x.1;
                    k
                })
                .count()
                .max(1);
            c.truncate(keep);
            let total: f64 = c.iter().map(|x| x.1).sum();
            c.iter_mut().for_each(|x| x.1 /= total);
        }
        c
    }

    pub fn sample<R: Rng + ?Sized>(&self, logits: &[f32], rng: &mut R) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let c = self.candidates(logits);
        let u: f64 = rng.random::<f64>();
        let mut acc = 0.0;
        for &(id, p) in &c {
            acc += p;
            if u < acc {
                return id;
            }
        }
        c.last().map_or(0, |x| x.0) // u within rounding of 1
    }
}

/// The index of the largest value, the lowest index among equals (as torch.argmax).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictions_keep_the_right_tokens() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, 0.0];
        assert_eq!(argmax(&logits), 1);
        let top2 = Sampler { temperature: 1.0, top_k: 2, top_p: 1.0 }.candidates(&logits);
        assert_eq!(top2.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 3]);
        let top3 = Sampler { temperature: 1.0, top_k: 3, top_p: 1.0 }.candidates(&logits);
        assert_eq!(top3.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        // p(1) = p(3) ≈ 0.39: the nucleus of 0.5 needs both.
        let nucleus = Sampler { temperature: 1.0, top_k: 0, top_p: 0.5 }.candidates(&logits);
        assert_eq!(nucleus.len(), 2);
        assert!((nucleus[0].1 - 0.5).abs() < 1e-12);
        let tiny = Sampler { temperature: 1.0, top_k: 0, top_p: 1e-9 }.candidates(&logits);
        assert_eq!(tiny, vec![(1, 1.0)]);
        assert!(Sampler { temperature: -1.0, ..Sampler::default() }.validate().is_err());
        assert!(Sampler { top_p: 0.0, ..Sampler::default() }.validate().is_err());
    }
}
