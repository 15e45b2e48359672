"""Wavelengths from filter names, for every channel (issue 10, point 4)."""

from __future__ import annotations

from pathlib import Path

from posdir2ometiff.metadata.model import Channel
from posdir2ometiff.metadata.swainlab import SwainLabParser
from posdir2ometiff.metadata.swainlab.light_path import filters, set_wavelengths


def _channel(path: str) -> Channel:
    ch = Channel("x", light_path=path)
    set_wavelengths(ch)
    return ch


def test_white_light_channel_gets_its_emission_filter() -> None:
    ch = _channel(
        "White LED\n"
        "->Combiner cube:[No exciter, No reflecting dichroic->(515LP and 455LP dichroics)]\n"
        "->Filter block:[Dual GFP/mCherry exciter (59022x),Dual dichroic (89021bs),"
        "No emission filter]\n"
        "->Emission filter wheel:[632/60 emission filter]"
    )
    assert (ch.excitation_wavelength_nm, ch.emission_wavelength_nm) == (None, 632.0)


def test_bare_filter_takes_its_device_direction() -> None:
    ch = _channel("White LED\n->Excitation filter wheel:[GFP 470/40]\n->Emission filter wheel:[]")
    assert (ch.excitation_wavelength_nm, ch.emission_wavelength_nm) == (470.0, None)
    assert filters("Lamp\n->Filter block:[GFP 470/40, 495LP dichroic, 525/50]") == (
        [470.0], [525.0]
    )


def test_led_wavelength_first_then_exciter_filter_and_longpass_ignored() -> None:
    ch = _channel(
        "470nm LED\n->Combiner cube:[480/40 exciter, 515LP dichroic->(455LP dichroic)]\n"
        "->Emission filter wheel:[520/40 emission filter]"
    )
    assert (ch.excitation_wavelength_nm, ch.emission_wavelength_nm) == (470.0, 520.0)
    assert _channel("White LED\n->Combiner cube:[480/40 exciter]").excitation_wavelength_nm == 480


def test_values_already_known_are_kept() -> None:
    ch = Channel("x", light_path="White LED\n->Emission filter wheel:[632/60]",
                 emission_wavelength_nm=610)
    set_wavelengths(ch)
    assert ch.emission_wavelength_nm == 610


def test_sample_brightfield_gets_the_emission_filter_it_passes(swainlab_sample: Path) -> None:
    meta = SwainLabParser().parse(swainlab_sample)
    assert meta.channel("Brightfield").emission_wavelength_nm == 535.0  # "535/50 emission filter"
    assert meta.channel("DIC").emission_wavelength_nm is None  # "Analyser": no band
    assert meta.channel("GFP").excitation_wavelength_nm == 470.0
