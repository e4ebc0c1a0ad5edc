"""Building blocks that methods compose, registered as nothing themselves: EMA teacher
(``momentum``), feature queue (``queue``), shuffle-BN (``shuffle_bn``), projection and prediction
heads (``heads``), the meta-gradient core of MetAug and MetaMask (``meta``) and the invariance
penalty of InvCLR (``invariance``)."""
