"""Model zoo: the Table-4 nets of Hoffer et al. (2016), registered with timm on import."""

from sclearn.models.table4 import TABLE4, Table4Head, Table4Net, sc_cifar10, sc_mnist, sc_stl10

__all__ = ["TABLE4", "Table4Head", "Table4Net", "sc_cifar10", "sc_mnist", "sc_stl10"]
