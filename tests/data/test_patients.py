import pytest

from pneumo.data.patients import patient_id_from_filename


@pytest.mark.parametrize(
    ("filename", "patient"),
    [
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("person12_bacteria_47.jpeg", "person12"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1000_bacteria_2931.jpeg", "person1000"),
    ],
)
def test_kaggle_names(filename: str, patient: str) -> None:
    assert patient_id_from_filename(filename) == patient


@pytest.mark.parametrize("filename", ["IM-0115-0001.JPEG", "IM-0115-0001.jpg", "IM-0115-0001.Jpeg"])
def test_extension_case_does_not_matter(filename: str) -> None:
    assert patient_id_from_filename(filename) == "IM-0115"


def test_images_of_one_patient_share_the_id() -> None:
    assert patient_id_from_filename("IM-0117-0001.jpeg") == patient_id_from_filename("IM-0117-0003.jpeg")
    assert patient_id_from_filename("person3_virus_15.jpeg") == patient_id_from_filename("person3_virus_16.jpeg")


def test_directories_are_ignored() -> None:
    assert patient_id_from_filename("/data/chest_xray/train/PNEUMONIA/person7_bacteria_29.jpeg") == "person7"


@pytest.mark.parametrize(
    ("filename", "patient"),
    [
        ("scan_001.png", "scan_001"),
        ("IM-0115.jpeg", "IM-0115"),  # no image number: not the Kaggle pattern, its own patient
        ("person12_fungus_47.jpeg", "person12_fungus_47"),
        ("person12_bacteria_47_copy.jpeg", "person12_bacteria_47_copy"),
    ],
)
def test_unknown_names_are_their_own_patient(filename: str, patient: str) -> None:
    assert patient_id_from_filename(filename) == patient
