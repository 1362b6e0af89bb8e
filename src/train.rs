//! Pieces of a training run that every front end (the CIFAR trainer, the eval example, the
//! browser demo) shares.

use crate::data::{BatchLoader, Dataset, LoaderOptions};
use crate::{Mode, Result, Session};

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
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate(session: &mut Session, set: &Dataset) -> Result<Evaluation> {
    pollster::block_on(evaluate_async(session, set))
}

/// [`evaluate`] for callers that cannot block, such as the browser.
pub async fn evaluate_async(session: &mut Session, set: &Dataset) -> Result<Evaluation> {
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
    session.release(Mode::Eval);
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
