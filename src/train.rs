//! Pieces of a training run that every front end (the CIFAR trainer, the eval example, the
//! browser demo) shares.

use crate::data::{BatchLoader, Dataset, LoaderOptions};
use crate::{Error, Pass, Result, Session, SgdHyper};

/// Checks SGD hyper-parameters before they are used: a finite, non-negative learning rate and
/// weight decay, and a momentum in [0, 1) (at 1 or above the momentum buffer never forgets and
/// training diverges). [`Session::train_step`] checks every step's values with it.
pub fn check_sgd(sgd: &SgdHyper) -> Result<()> {
    let bad = |m: String| Err(Error::Config(m));
    if !(sgd.lr.is_finite() && sgd.lr >= 0.0) {
        return bad(format!(
            "the learning rate must be a finite number >= 0, got {}; the DenseNet recipe starts at 0.1",
            sgd.lr
        ));
    }
    if !(0.0..1.0).contains(&sgd.momentum) {
        return bad(format!(
            "the momentum must be in [0, 1), got {}; the DenseNet recipe uses 0.9 (0 turns momentum off)",
            sgd.momentum
        ));
    }
    if !(sgd.weight_decay.is_finite() && sgd.weight_decay >= 0.0) {
        return bad(format!(
            "the weight decay must be a finite number >= 0, got {}; the DenseNet recipe uses 1e-4 (0 turns it off)",
            sgd.weight_decay
        ));
    }
    Ok(())
}

/// Accuracy and mean loss of eval-mode inference over a dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy, in nats.
    pub loss: f64,
    /// Top-1 accuracy, in [0, 1].
    pub accuracy: f64,
    /// Top-5 accuracy, in [0, 1] (see [`in_top_k`]); 1 with 5 classes or fewer.
    pub top5_accuracy: f64,
    pub images: usize,
}

/// Runs eval-mode inference over every image of `set` and frees the inference arena after.
/// A session's programs have a fixed batch, so a short last batch is padded with repeats of
/// its own images, which are not counted.
pub async fn evaluate(session: &mut Session, set: &Dataset) -> Result<Evaluation> {
    let batch_size = session.graph.batch as usize;
    let loader = BatchLoader::new(set.clone(), LoaderOptions::eval(batch_size))?;
    evaluate_batches(session, loader.epoch(0).map(|b| (b.images, b.labels))).await
}

/// [`evaluate`] over any batches of NCHW images and their labels, such as a streamed
/// validation set, each of at most the session's batch size.
pub async fn evaluate_batches(
    session: &mut Session,
    batches: impl IntoIterator<Item = (Vec<f32>, Vec<u32>)>,
) -> Result<Evaluation> {
    try_evaluate_batches(session, batches.into_iter().map(Ok)).await
}

/// [`evaluate_batches`] over batches that may fail to be made, such as those of a
/// [`crate::data::StreamLoader`] meeting a bad file: the first error ends the evaluation and
/// is returned (the inference arena is freed all the same).
pub async fn try_evaluate_batches(
    session: &mut Session,
    batches: impl IntoIterator<Item = Result<(Vec<f32>, Vec<u32>)>>,
) -> Result<Evaluation> {
    let result = evaluate_fallible(session, batches).await;
    session.release(Pass::Eval);
    result
}

async fn evaluate_fallible(
    session: &mut Session,
    batches: impl IntoIterator<Item = Result<(Vec<f32>, Vec<u32>)>>,
) -> Result<Evaluation> {
    let batch_size = session.graph.batch as usize;
    let (mut loss, mut correct, mut top5, mut seen) = (0.0f64, 0u64, 0u64, 0usize);
    for batch in batches {
        let (mut images, mut labels) = batch?;
        let real = labels.len();
        if real == 0 {
            continue;
        }
        let per_image = images.len() / real;
        while labels.len() < batch_size {
            let i = labels.len() % real;
            images.extend_from_within(i * per_image..(i + 1) * per_image);
            labels.push(labels[i]);
        }
        let (logits, _) = session.eval_batch(&images, &labels).await?;
        let k = logits.len() / labels.len();
        for (row, &label) in logits.chunks(k).zip(&labels).take(real) {
            loss += cross_entropy(row, label as usize);
            correct += (argmax(row) == label as usize) as u64;
            top5 += in_top_k(row, label as usize, 5) as u64;
        }
        seen += real;
    }
    let n = seen.max(1) as f64;
    Ok(Evaluation { loss: loss / n, accuracy: correct as f64 / n, top5_accuracy: top5 as f64 / n, images: seen })
}

/// Whether `label` is among the `k` largest logits: fewer than `k` logits are strictly larger
/// than its own. A tie at the k-th place counts as a hit, where `torch.topk`'s pick among equal
/// values is unspecified. A NaN logit for the label is never a hit.
pub fn in_top_k(logits: &[f32], label: usize, k: usize) -> bool {
    let own = logits[label];
    !own.is_nan() && logits.iter().filter(|&&v| v > own).count() < k
}

/// −log softmax(logits)[label], computed stably.
pub fn cross_entropy(logits: &[f32], label: usize) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    log_sum - logits[label] as f64
}

/// Index of the largest logit, the lowest index on ties (like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> usize {
    logits.iter().enumerate().fold(0, |best, (i, &v)| if v > logits[best] { i } else { best })
}

/// Softmax probabilities.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_the_logits_above_the_label() {
        let logits = [0.1, 0.9, 0.3, 0.9, -1.0, 0.5, 0.2];
        assert!(in_top_k(&logits, 1, 1) && in_top_k(&logits, 3, 1), "a tie at the top is a hit");
        assert!(!in_top_k(&logits, 5, 2) && in_top_k(&logits, 5, 3));
        assert!(!in_top_k(&logits, 4, 5) && in_top_k(&logits, 4, 7));
        assert!(!in_top_k(&[f32::NAN, 1.0], 0, 2), "a NaN logit is never a hit");
    }

    #[test]
    fn check_sgd_accepts_the_recipe_and_names_what_is_wrong() {
        check_sgd(&SgdHyper::densenet_cifar()).unwrap();
        check_sgd(&SgdHyper { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false }).unwrap();
        let with = |lr: f32, momentum: f32, weight_decay: f32| {
            check_sgd(&SgdHyper { lr, momentum, weight_decay, nesterov: true }).unwrap_err().to_string()
        };
        for (msg, parts) in [
            (with(0.1, 1.5, 1e-4), ["momentum must be in [0, 1), got 1.5", "0.9"]),
            (with(0.1, 1.0, 1e-4), ["momentum must be in [0, 1), got 1", "0.9"]),
            (with(0.1, -0.1, 1e-4), ["momentum must be in [0, 1), got -0.1", "0.9"]),
            (with(0.1, f32::NAN, 1e-4), ["momentum must be in [0, 1), got NaN", "0.9"]),
            (with(-1.0, 0.9, 1e-4), ["learning rate must be a finite number >= 0, got -1", "0.1"]),
            (with(f32::INFINITY, 0.9, 1e-4), ["learning rate must be a finite number >= 0, got inf", "0.1"]),
            (with(0.1, 0.9, -1e-4), ["weight decay must be a finite number >= 0, got -0.0001", "1e-4"]),
            (with(0.1, 0.9, f32::NAN), ["weight decay must be a finite number >= 0, got NaN", "1e-4"]),
        ] {
            for p in parts {
                assert!(msg.contains(p), "{msg:?} does not say {p:?}");
            }
        }
    }
}
