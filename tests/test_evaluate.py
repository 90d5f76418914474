import torch

from digitlib.modeling.predict import Evaluation


def test_figures_from_known_predictions():
    labels = torch.tensor([0, 1, 1, 2])
    probs = torch.zeros(4, 10)
    # (row, class, probability): rows 0, 1 and 3 right; row 2 says 2 for a 1.
    for row, cls, p in [
        (0, 0, 0.9),
        (0, 1, 0.1),
        (1, 1, 0.6),
        (1, 2, 0.4),
        (2, 2, 0.8),
        (2, 1, 0.2),
        (3, 2, 0.7),
        (3, 0, 0.3),
    ]:
        probs[row, cls] = p
    ev = Evaluation(probs, labels)
    assert ev.accuracy == 0.75
    cm = ev.confusion_matrix()
    assert cm[1, 2] == 1 and cm[1, 1] == 1 and cm.sum() == 4
    assert ev.per_class_accuracy()[:3] == [1.0, 0.5, 1.0] and ev.per_class_accuracy()[3] is None
    assert ev.misclassified().tolist() == [2]
    summary = ev.summary()
    assert summary["errors"] == 1 and abs(summary["mean_confidence"] - 0.75) < 1e-6
    assert abs(summary["mean_confidence_wrong"] - 0.8) < 1e-6
