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
    pub loss: f64,
    pub accuracy: f64,
    pub images: usize,
}

/// Runs eval-mode inference over every image of `set` and frees the inference arena after.
/// A session's programs have a fixed batch, so a short last batch is padded with repeats of
/// its own images, which are not counted.
pub async fn evaluate(session: &mut Session, set: &Dataset) -> Result<Evaluation> {
    let batch_size = session.graph.batch as usize;
    let loader = BatchLoader::new(set.clone(), LoaderOptions::eval(batch_size))?;
    let (mut loss, mut correct, mut seen) = (0.0f64, 0u64, 0usize);
    for batch in loader.epoch(0) {
        let real = batch.len();
        let (mut images, mut labels) = (batch.images, batch.labels);
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
        }
        seen += real;
    }
    session.release(Pass::Eval);
    let n = seen.max(1) as f64;
    Ok(Evaluation { loss: loss / n, accuracy: correct as f64 / n, images: seen })
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
