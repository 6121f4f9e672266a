"""Optimizers (plain ``torch.optim.Optimizer`` subclasses). The methods arrive in later releases."""

__all__: list[str] = []
