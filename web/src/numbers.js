// Numbers as people read them: losses to 3 decimals, accuracies as percentages (0.1 %),
// a mean across seeds with its std only when there was more than one seed ("+- 0" says
// nothing), and the seed count. Gradients keep their own notation (charts.js formatValue).

function isAccuracy(metric) {
  return /(^|_)acc$/.test(metric);
}

// One value of a metric named like the API's ("train_loss", "test_acc", "final_val_acc").
export function formatMetric(metric, value) {
  if (value == null || !Number.isFinite(value)) return "-";
  return isAccuracy(metric) ? `${(100 * value).toFixed(1)} %` : value.toFixed(3);
}

// A spread in the metric's unit: percentage points for accuracies.
function formatSpread(metric, std) {
  return isAccuracy(metric) ? (100 * std).toFixed(1) : std.toFixed(3);
}

// {mean, std, n} -> "48.6 %" (n = 1), "48.6 +- 1.2 % (n=4)", "-" (n = 0).
export function formatSummary(metric, summary) {
  if (!summary || !summary.n || summary.mean == null) return "-";
  if (summary.n < 2 || summary.std == null) return formatMetric(metric, summary.mean);
  const unit = isAccuracy(metric) ? " %" : "";
  const mean = isAccuracy(metric) ? (100 * summary.mean).toFixed(1) : summary.mean.toFixed(3);
  return `${mean} +- ${formatSpread(metric, summary.std)}${unit} (n=${summary.n})`;
}
