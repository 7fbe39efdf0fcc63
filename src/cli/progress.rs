//! A progress bar on stderr for work of more than one batch.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(total_images: usize, batches: usize, quiet: bool, what: &str) -> ProgressBar {
    if quiet || batches <= 1 {
        return ProgressBar::hidden();
    }
    let bar =
        ProgressBar::with_draw_target(Some(total_images as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} images ({{per_sec}}, eta {{eta}})"
        ))
        .expect("valid template"),
    );
    bar
}
