"""Closed-form Bayesian adaptation: Bayesian linear and Gaussian-process heads on features,
meta-learned Gaussian priors for parametric laws, and the scores of their predictive uncertainty.

Every head offers ``fit(support) -> posterior`` and ``posterior.predict(query) -> (mean, std)``,
so an evaluation scores them all the same way (:func:`score_predictions`). The feature heads'
posteriors also give exact leave-one-out predictions and the exact change of any query prediction
when one support point is removed, without refitting. On a model with ``features`` the heads are
also meta-learning algorithms (``MetaSettings(algorithm="bayes_linear" | "gp")``): the features are
meta-trained through the closed-form fit (:func:`fit_feature_head`, :func:`adapt_head`).

Example:
    >>> from matmeta.bayes import BayesianLinearHead, score_predictions
    >>> post = BayesianLinearHead().fit(Samples(phi_support, y_support))
    >>> mean, std = post.predict(phi_query)
    >>> score_predictions(mean, std, y_query)        # mae, crps, nlpd, coverage_50, coverage_90
"""

from matmeta.bayes._core import JitterWarning, cholesky_with_jitter
from matmeta.bayes._gp import (
    KERNELS,
    GaussianProcessHead,
    GPPosterior,
    fit_gp,
    gp_kernel,
    gp_log_marginal_likelihood,
)
from matmeta.bayes._interface import AdaptationHead, PredictivePosterior, score_head
from matmeta.bayes._linear import (
    BayesianLinearHead,
    LinearPosterior,
    fit_bayes_linear,
    linear_log_evidence,
)
from matmeta.bayes._meta import (
    BAYES_ALGORITHMS,
    HeadPosterior,
    adapt_head,
    fit_feature_head,
    head_predict,
    head_query_loss,
    refit_head,
)
from matmeta.bayes._metrics import (
    central_interval,
    gaussian_crps,
    gaussian_nlpd,
    interval_coverage,
    sample_crps,
    score_predictions,
)
from matmeta.bayes._prior import (
    ParametricPosterior,
    ParametricPriorHead,
    PriorFit,
    adapt_parametric,
    learn_prior,
)

__all__ = [
    "adapt_head",
    "adapt_parametric",
    "AdaptationHead",
    "BAYES_ALGORITHMS",
    "BayesianLinearHead",
    "central_interval",
    "cholesky_with_jitter",
    "fit_bayes_linear",
    "fit_feature_head",
    "fit_gp",
    "gaussian_crps",
    "gaussian_nlpd",
    "GaussianProcessHead",
    "gp_kernel",
    "gp_log_marginal_likelihood",
    "GPPosterior",
    "HeadPosterior",
    "head_predict",
    "head_query_loss",
    "interval_coverage",
    "JitterWarning",
    "KERNELS",
    "learn_prior",
    "linear_log_evidence",
    "LinearPosterior",
    "ParametricPosterior",
    "ParametricPriorHead",
    "PredictivePosterior",
    "PriorFit",
    "refit_head",
    "sample_crps",
    "score_head",
    "score_predictions",
]
