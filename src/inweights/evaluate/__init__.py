"""Evaluation: answer metrics, option scoring, perplexity and the general-ability (forgetting) suite."""
