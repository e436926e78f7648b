"""Settings the paper's recipes share (Hoffer et al. 2016, Sec. 4 and Table 4); each recipe adds its own."""

# SC pre-training at lr 0.1, then the supervised fine-tune "following the same regime, only starting with a lower
# initial learning rate of 0.01", the lr divided by 10 when the epoch's loss stops decreasing.
TWO_STAGE = dict(mode="two_stage", preset="paper", pretrain_lr=0.1, lr=0.01, schedule="plateau")

# Table 2: CIFAR-10 with 400 labels per class, Table 4's CIFAR-10 net, SC after its second 2x2 max-pool + BN.
CIFAR10 = dict(
    data="uoft-cs/cifar10", protocol="cifar10", labels_per_class=400,
    image_size=32, channels=3, translate=2,
    backbone="sc_cifar10", layers=("stages.1",),
)
