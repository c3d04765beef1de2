//! `vecrig-loadgen`: runs stress scenarios against a vecrig server over the network.
